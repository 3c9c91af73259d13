"""Scale benchmark: the whole pipeline at N contacts, time and peak memory per stage.

Each stage runs as its own ``engage`` process (``--profile scale``: monthly snapshots and
a sampled training set) on a fresh data directory; a sampler thread records the peak RSS
of the process tree. A small reference size runs in the same invocation, so the table
also reports how the time per contact scales (a ratio, robust to a noisy machine).

    python -m benchmarks.bench_scale --customers 1000000 [--reference 20000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.report import write_section

STAGES = (
    ("simulate", ["data", "simulate"]),
    ("features + Feast apply/materialize", ["features", "build"]),
    ("train churn + appetence", ["train", "--model", "all"]),
    ("batch scoring with reasons", ["score"]),
)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_stage(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run one engage command; returns (seconds, peak RSS in MB of its process tree).

    Raises:
        RuntimeError: the command failed (its log is named).
    """
    engage = str(Path(sys.executable).parent / "engage")
    start = time.perf_counter()
    with log.open("a") as out:
        proc = subprocess.Popen([engage, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(ps))
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"engage {' '.join(args)} failed: see {log}")
    return seconds, peak / 2**20


def run_pipeline(customers: int, data_dir: Path, days: int = 365) -> list[dict]:
    """All stages at ``customers`` contacts in ``data_dir``; one row per stage."""
    env = {**os.environ, "ENGAGE_DATA_DIR": str(data_dir), "ENGAGE_PROFILE": "scale"}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "bench_scale.log"
    rows = []
    for name, cmd in STAGES:
        extra = ["--customers", str(customers), "--days", str(days)] if cmd[0] == "data" else []
        seconds, peak = run_stage([*cmd, *extra], env, log)
        rows.append({"stage": name, "seconds": seconds, "peak_mb": peak})
        print(f"{customers:>9,} {name:<40} {seconds:8.1f} s {peak:8.0f} MB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the data here")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    base = args.data_dir or Path(tempfile.mkdtemp(prefix="engage-scale-"))
    try:
        ref = run_pipeline(args.reference, base / f"n{args.reference}", args.days)
        big = run_pipeline(args.customers, base / f"n{args.customers}", args.days)
    finally:
        if args.data_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    total_s = sum(r["seconds"] for r in big)
    total_ref = sum(r["seconds"] for r in ref)
    peak = max(r["peak_mb"] for r in big)
    scale = args.customers / args.reference
    lines = [
        f"| stage | {args.customers:,} contacts (s) | peak RSS (MB) | "
        f"{args.reference:,} contacts (s) | time ratio (x{scale:.0f} contacts) |",
        "|---|---:|---:|---:|---:|",
    ]
    for b, r in zip(big, ref, strict=True):
        lines.append(
            f"| {b['stage']} | {b['seconds']:.0f} | {b['peak_mb']:,.0f} | {r['seconds']:.1f} | "
            f"{b['seconds'] / r['seconds']:.1f} |"
        )
    lines.append(
        f"| **whole pipeline** | **{total_s:.0f}** ({total_s / 60:.1f} min) | **{peak:,.0f}** | "
        f"{total_ref:.1f} | {total_s / total_ref:.1f} |"
    )
    verdict = (
        f"Aim: under 30 minutes and 8 GB. Measured: {total_s / 60:.1f} min, peak "
        f"{peak / 1024:.1f} GB ({'met' if total_s < 1800 and peak < 8192 else 'missed'})."
    )
    body = (
        "\n".join(lines) + f"\n\n{verdict} Each stage is a separate `engage` process with "
        "`ENGAGE_PROFILE=scale` (snapshots every 28 days, 25,000 sampled contacts per "
        "training as-of time, 2 validation and 2 test snapshots); peak RSS is that of the "
        "process tree. The ratio column compares with the reference size run in the same "
        "invocation: a ratio well below the contact ratio means fixed costs dominate the "
        "small run.\n"
    )
    print(body)
    if not args.no_write:
        cmd = (
            f"python -m benchmarks.bench_scale --customers {args.customers} "
            f"--reference {args.reference}"
        )
        write_section("scale", "Scale: the whole pipeline", cmd, body)


if __name__ == "__main__":
    main()
