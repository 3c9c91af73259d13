"""Help pages built when they are shown: defaults from params.yaml, the event vocabulary.

Option defaults live in ``params.yaml`` (the options default to None and the command
reads the parameter), so a help text names its parameter with a placeholder that is
filled in when ``--help`` runs, with the parameters of that invocation (``--profile``,
``--params``, ``--set`` apply)::

    help=f"Number of contacts. {default_from('simulate.customers')}"

shows ``Number of contacts. [default: 20000 (simulate.customers in params.yaml)]``. If the
parameters cannot be read, the key alone is shown. ``{list:data.event_types}`` is
replaced by the list's items and ``{fields}`` by the event schema's fields.

:class:`EngageGroup` is the class of every command group: each command it hands out has
its help filled in this way, and flags are shown without a ``<bool>`` type column.
"""

from __future__ import annotations

import re
from types import MethodType
from typing import Any

from rich.markup import escape
from typer.core import TyperGroup

_PLACEHOLDER = re.compile(r"\{(params|list):([a-z_][a-z0-9_.]*)\}|\{fields\}")
_PREPARED = "_engage_help_ready"


def default_from(key: str) -> str:
    """The placeholder that shows the default of parameter ``key`` (dotted) in a help."""
    return f"{{params:{key}}}"


def _params(ctx: Any) -> Any | None:
    """The parameters of this invocation, else the project's, else None."""
    root = ctx.find_root() if ctx is not None else None
    obj = getattr(root, "obj", None)
    if obj is not None and hasattr(obj, "params"):
        return obj.params
    from engage.config import ConfigError, load_params

    try:
        return load_params()
    except (ConfigError, OSError):
        return None


def _lookup(params: Any, key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    return "null" if value is None else str(value)


def fill(text: str | None, params: Any | None) -> str | None:
    """``text`` with its placeholders replaced (rich markup in the values escaped)."""
    if not text:
        return text

    def repl(match: re.Match) -> str:
        kind, key = match.group(1), match.group(2)
        if kind is None:
            from engage.schema import EVENTS_SCHEMA, REQUIRED_EVENT_COLUMNS

            return ", ".join(
                f"{f}{'' if f in REQUIRED_EVENT_COLUMNS else ' (optional)'}"
                for f in EVENTS_SCHEMA.names
            )
        try:
            value = _lookup(params, key) if params is not None else None
        except (AttributeError, KeyError, TypeError):
            params_ok = False
        else:
            params_ok = params is not None
        if kind == "list":
            return escape(_show(value)) if params_ok else f"see {key} in params.yaml"
        if not params_ok:
            return escape(f"[default: {key} in params.yaml]")
        return escape(f"[default: {_show(value)} ({key} in params.yaml)]")

    return _PLACEHOLDER.sub(repl, text)


def _tidy(command: Any, ctx: Any) -> None:
    """Flags without a ``<bool>`` type column nor a ``[default: no-x]`` line."""
    for param in command.get_params(ctx):
        # Duck-typed: typer ships its own copy of click, whose classes are not click's.
        if getattr(param, "is_flag", False) and getattr(param, "opts", None):
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            if not param.default:
                param.show_default = False


def _format_help(self: Any, ctx: Any, formatter: Any) -> None:
    _tidy(self, ctx)
    params = _params(ctx)
    originals = [(p, p.help) for p in self.params if hasattr(p, "help")]
    doc = self.help
    try:
        for param, text in originals:
            param.help = fill(text, params)
        self.help = fill(doc, params)
        type(self).format_help(self, ctx, formatter)
    finally:
        # The command object lives on: the next help (other --set) fills it again.
        for param, text in originals:
            param.help = text
        self.help = doc


def prepare(command: Any) -> Any:
    """Make ``command`` fill its help placeholders and tidy its flags (once)."""
    if not getattr(command, _PREPARED, False):
        command.format_help = MethodType(_format_help, command)  # type: ignore[method-assign]
        setattr(command, _PREPARED, True)
    return command


class EngageGroup(TyperGroup):
    """A command group whose commands fill their help when it is shown (see module)."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command, prepared by :func:`prepare`."""
        command = super().get_command(ctx, cmd_name)
        return prepare(command) if command is not None else None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The group's own help, its flags tidied too."""
        _tidy(self, ctx)
        super().format_help(ctx, formatter)
