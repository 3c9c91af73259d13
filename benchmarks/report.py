"""Shared helpers of the benchmark scripts: machine facts and BENCHMARKS.md sections.

Each benchmark owns one section of ``BENCHMARKS.md``, delimited by
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; rerunning a benchmark replaces its
section and leaves the others alone.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure here is written by a script under `benchmarks/` (the command is given "
    "with each table). Machines are noisy: each table compares against a baseline measured "
    "in the same run and reports the ratio.\n"
)


def machine_line() -> str:
    """One line describing this machine, for the header of each section."""
    mem_gb = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB RAM, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def write_section(name: str, title: str, command: str, body: str) -> Path:
    """Replace (or add) the section ``name`` of BENCHMARKS.md.

    Args:
        name: section key used in the markers.
        title: markdown heading text.
        command: the shell command that reproduces the figures.
        body: markdown (tables, notes).

    Returns:
        The path of BENCHMARKS.md.
    """
    today = dt.date.today().isoformat()
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"- Machine: {machine_line()}\n- Date: {today}\n- Command: `{command}`\n\n"
        f"{body.strip()}\n<!-- /bench:{name} -->"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
    return BENCHMARKS_MD


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    result: Any


def measure(fn: Callable[[], Any], interval: float = 0.05, children: bool = False) -> Measurement:
    """Run ``fn`` and report wall time and the peak RSS of this process during the call.

    The peak is sampled by a thread (psutil), so it measures this call rather than the
    lifetime high-water mark that ``ru_maxrss`` reports. With ``children`` the RSS of
    the process's children (e.g. Spark's JVM) is added to each sample.
    """
    proc = psutil.Process()

    def rss() -> int:
        total = proc.memory_info().rss
        for child in proc.children(recursive=True) if children else ():
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    peak = rss()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        elapsed = time.perf_counter() - start
        stop.set()
        thread.join()
    peak = max(peak, rss())
    return Measurement(seconds=elapsed, peak_rss_mb=peak / 2**20, result=result)


def max_rss_mb() -> float:
    """Lifetime peak RSS of this process in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
