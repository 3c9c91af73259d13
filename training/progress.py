"""Progress of a LightGBM fit, reported to whoever is watching (the command line).

The fitting code stays free of any display: :func:`watch_rounds` sets, for the block it
wraps, a function called after each boosting round with ``(round, total)``, and
:func:`lightgbm_callbacks` gives ``lgb.train`` the callback that calls it (none when
nobody watches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

RoundHook = Callable[[int, int], None]
_HOOK: ContextVar[RoundHook | None] = ContextVar("engage_boosting_rounds", default=None)


@contextmanager
def watch_rounds(hook: RoundHook) -> Iterator[None]:
    """Call ``hook(round, total)`` after each boosting round of fits inside the block."""
    token = _HOOK.set(hook)
    try:
        yield
    finally:
        _HOOK.reset(token)


def lightgbm_callbacks() -> list:
    """The ``lgb.train`` callbacks reporting rounds to the current hook (or none)."""
    hook = _HOOK.get()
    if hook is None:
        return []

    def report(env) -> None:
        hook(env.iteration + 1, env.end_iteration)

    return [report]
