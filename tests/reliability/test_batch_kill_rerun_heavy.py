"""Every kill point of every batch step, and random-time kills (``make test-reliability``).

Each case: a copy of the data dir the step starts from, the step killed with SIGKILL,
the stores checked readable, the step rerun, the stores compared with those of an
uninterrupted run (``benchmarks/reliability.py``). Training and scoring start from a
trained copy, so the whole module takes about half an hour on 2 cores.
"""

from __future__ import annotations

import pytest

from benchmarks.reliability import ORDER, STEPS
from tests.reliability.conftest_batch import bench  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.reliability_heavy]

CASES = [(step, point) for step in ORDER for point in STEPS[step].points]


@pytest.mark.parametrize(("step", "point"), CASES)
def test_every_kill_point(bench, step, point):  # noqa: F811
    bench.prepare((step,))
    case = bench.case(step, point)
    assert case.killed, case
    assert case.readable, case.detail
    assert case.rerun_ok and case.identical, case.detail


@pytest.mark.parametrize("step", ORDER)
def test_random_time_kills(bench, step):  # noqa: F811
    bench.prepare((step,))
    for case in bench.random_cases(step, 2, seed=ORDER.index(step)):
        assert case.readable, case.detail
        assert case.rerun_ok and case.identical, case.detail
