"""Record the CDNOW evaluation (``evaluation/cdnow.py``) in BENCHMARKS.md.

.venv/bin/python -m benchmarks.bench_cdnow [--customers N] [--seed S] [--no-rehearsal]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.report import write_section
from evaluation.cdnow import default_data_dir, report_markdown, run_cdnow_benchmark

COMMAND = ".venv/bin/python -m benchmarks.bench_cdnow"


def write_report(result: dict, command: str) -> Path:
    """Write the ``cdnow`` section of BENCHMARKS.md; returns the file."""
    return write_section(
        "cdnow",
        "CDNOW: repeat buyers in the 39-week holdout (real data)",
        command,
        report_markdown(result),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="default: data/bench_cdnow")
    ap.add_argument("--customers", type=int, default=None, help="random sample size")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-rehearsal", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    began = time.perf_counter()
    result = run_cdnow_benchmark(
        args.data_dir or default_data_dir(),
        customers=args.customers,
        seed=args.seed,
        rehearsal=not args.no_rehearsal,
        progress=lambda msg: print(f"[{time.perf_counter() - began:6.1f} s] {msg}", flush=True),
    )
    body = report_markdown(result)
    print(body)
    if not args.no_write:
        command = COMMAND + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        print(f"\nwrote {write_report(result, command)}")


if __name__ == "__main__":
    main()
