"""Kill-and-rerun matrix of the batch commands -> BENCHMARKS.md (section *Crash safety*).

Every step (``data ingest``, ``features build``, ``train``, ``score``) is killed with
SIGKILL at each of its named kill points and at a few random times, on a copy of the
data dir it starts from; the matrix says whether the stores were readable after the
kill and whether a rerun left exactly what an uninterrupted run leaves
(``benchmarks/reliability.py`` has the rules of the comparison).

    python -m benchmarks.bench_reliability [--random 2] [--steps ingest,features,train,score]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.reliability import ORDER, STEPS, Bench, Case, matrix_markdown
from benchmarks.reliability_child import HARNESS_POINTS
from benchmarks.report import write_section
from engage.faults import POINTS


def run(steps: tuple[str, ...], random_kills: int, root: Path, seed: int = 11) -> list[Case]:
    bench = Bench(root)
    bench.prepare(steps)
    cases = []
    for step in steps:
        for point in STEPS[step].points:
            cases.append(bench.case(step, point))
            print(cases[-1], flush=True)
        for case in bench.random_cases(step, random_kills, seed + ORDER.index(step)):
            cases.append(case)
            print(case, flush=True)
    return cases


def render(cases: list[Case], seconds: float) -> str:
    points = {**POINTS, **HARNESS_POINTS}
    used = dict.fromkeys(c.point.partition("#")[0] for c in cases)
    legend = "\n".join(f"- `{p}`: {points[p]}" for p in used if p in points)
    failed = [c for c in cases if not (c.readable and c.rerun_ok and c.identical)]
    notes = "\n".join(f"- {c.step} `{c.point}`: {c.detail}" for c in failed)
    return (
        "Each step starts from a copy of the data dir the previous step left (600 demo "
        "contacts over 280 days, features built; the ingest step replaces them with "
        "another simulated history of 600 contacts from a `;`-separated CSV with 6 bad "
        "rows, so the following build must drop every old snapshot). A kill point makes "
        "the process SIGKILL itself there (`ENGAGE_FAULT=<point>`, `#N` = the N-th time); "
        "random kills land after the start-up time of a command (`engage --help`: the "
        "imports), then between 10 % and 90 % of the rest of the uninterrupted run's "
        "duration "
        "(one that lands after the end shows as *finished first*). *Readable*: every "
        "store opens through the product's readers and no non-hidden Parquet file is "
        "torn (train and score start with no model or run yet: every champion or run that "
        "exists loads). *Identical*: after the rerun, the stores hold the same contents as after "
        "an uninterrupted run (build and ingest times left out).\n\n"
        f"{matrix_markdown(cases)}\n\n"
        f"{len(cases)} cases, {len(cases) - len(failed)} fully passed, in {seconds:.0f} s.\n\n"
        f"Kill points:\n{legend}\n" + (f"\nFailures:\n{notes}\n" if failed else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", default=",".join(ORDER))
    parser.add_argument("--random", type=int, default=2, help="random-time kills per step")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: temporary)")
    args = parser.parse_args()
    steps = tuple(s for s in args.steps.split(",") if s)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; use {', '.join(ORDER)}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="engage-reliability-"))
    began = time.perf_counter()
    try:
        cases = run(steps, args.random, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    body = render(cases, time.perf_counter() - began)
    command = "python -m benchmarks.bench_reliability"
    if args.steps != ",".join(ORDER) or args.random != 2:
        command += f" --steps {args.steps} --random {args.random}"
    path = write_section("reliability", "Crash safety: kill and rerun", command, body)
    print(body)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
