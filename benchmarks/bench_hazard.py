"""Record the hazard-model evaluation (``evaluation/hazard.py``) in BENCHMARKS.md.

OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python -m benchmarks.bench_hazard
    [--dataset both] [--demo-customers N] [--cdnow-customers N] [--seed S] [--no-write]

(OMP_WAIT_POLICY=PASSIVE: LightGBM's OpenMP threads otherwise spin while they wait, which
made the fits several times slower on a shared 2-core machine; see tests/conftest.py.)

The tracking plot of CDNOW goes to ``benchmarks/figures/hazard_cdnow_tracking.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.report import ROOT, write_section
from evaluation.hazard import default_data_dir, report_markdown, run_hazard_benchmark

COMMAND = "OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python -m benchmarks.bench_hazard"
PLOT = ROOT / "benchmarks" / "figures" / "hazard_cdnow_tracking.png"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="default: data/bench_hazard")
    ap.add_argument("--dataset", choices=("demo", "cdnow", "both"), default="both")
    ap.add_argument("--demo-customers", type=int, default=4000)
    ap.add_argument("--cdnow-customers", type=int, default=None, help="random sample size")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    datasets = ("demo", "cdnow") if args.dataset == "both" else (args.dataset,)
    began = time.perf_counter()
    result = run_hazard_benchmark(
        args.data_dir or default_data_dir(),
        datasets=datasets,
        demo_customers=args.demo_customers,
        cdnow_customers=args.cdnow_customers,
        seed=args.seed,
        # --no-write leaves the committed figure alone too.
        plot=PLOT if "cdnow" in datasets and not args.no_write else None,
        progress=lambda msg: print(f"[{time.perf_counter() - began:6.1f} s] {msg}", flush=True),
    )
    body = report_markdown(result)
    print(body)
    if not args.no_write:
        command = COMMAND + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        path = write_section(
            "hazard", "Time-to-event (hazard) models: one fit, every horizon", command, body
        )
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
