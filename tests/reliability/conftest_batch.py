"""Fixtures of the batch reliability tests; modules import them explicitly.

(Not a ``conftest.py``: the service's reliability tests live in the same folder.)
"""

from __future__ import annotations

import pytest

from benchmarks.reliability import Bench


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> Bench:
    """The kill-and-rerun harness on a session folder; steps are prepared on demand."""
    return Bench(tmp_path_factory.mktemp("reliability"))
