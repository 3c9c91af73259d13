"""Kill points: nothing happens unless $ENGAGE_FAULT names the point; then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys

from engage.faults import POINTS, fault_point

CODE = (
    "from engage.faults import fault_point\n"
    "for i in range(3):\n"
    "    print(i, flush=True)\n"
    "    fault_point('demo:point')\n"
    "print('done', flush=True)\n"
)


def _run(fault: str | None):
    env = {"PATH": "/usr/bin:/bin"}
    if fault is not None:
        env["ENGAGE_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)


def test_a_named_point_kills_the_process_at_the_nth_hit():
    assert _run(None).stdout.split() == ["0", "1", "2", "done"]
    assert _run("other:point").stdout.split() == ["0", "1", "2", "done"]
    first = _run("demo:point")
    assert first.returncode == -signal.SIGKILL and first.stdout.split() == ["0"]
    second = _run("x:y, demo:point#2")
    assert second.returncode == -signal.SIGKILL and second.stdout.split() == ["0", "1"]


def test_fault_point_is_a_no_op_without_the_variable(monkeypatch):
    monkeypatch.delenv("ENGAGE_FAULT", raising=False)
    for name in POINTS:
        fault_point(name)
    assert all(":" in name for name in POINTS)
