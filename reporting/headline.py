"""The numbers a retention lead reads first: who to call this week, and what changed.

Each figure is computed by the same functions as the command line, so the report and
the CLI agree for the same runs (a test checks it):

- *customers to call*: the call list of the latest run, the still-reachable customers
  in Exit by value at risk up to ``report.capacity``
  (``engage at-risk --call-list``, :func:`serving.at_risk.call_list`);
- *their value at risk*: the sum of ``value_at_risk`` over that list;
- *change since the last run*: the same two figures for the run before
  (``engage at-risk --call-list --run <previous>``);
- *newly entered Exit*: contacts in Exit in the latest run and in another stage in the
  run before (``engage transitions``, the "entered" line), with the stage they came from;
- *already lapsed*: customers in Exit who are no longer reachable (Lost / At risk), the
  win-back campaign's audience rather than the phone's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engage.config import Params, Paths
from serving.at_risk import call_list, lapsed
from serving.index import EXIT, STAGES
from serving.runs import RunInfo, find_run, read_run


@dataclass
class Headline:
    """The headline figures of the latest run (``previous``: the run before, if any)."""

    run: RunInfo
    previous: RunInfo | None
    capacity: int
    to_call: int
    value_at_risk: float
    to_call_before: int | None
    value_before: float | None
    in_exit: int
    lapsed_in_exit: int
    entered_exit: int | None
    entered_from: dict[str, int] = field(default_factory=dict)


def _calls(paths: Paths, capacity: int, run_id: str) -> tuple[int, float]:
    _, frame = call_list(paths, capacity, run_id)
    # NaN when every value is unknown (data without amounts), never a made-up 0.
    return len(frame), float(frame["value_at_risk"].sum(min_count=1))


def headline(paths: Paths, params: Params, run_id: str | None = None) -> Headline:
    """The headline figures of run ``run_id`` (default: the latest) against the run before.

    Raises:
        LookupError: no scoring run, or an unknown run id.

    """
    from serving.transitions import stage_transitions

    run = find_run(paths, run_id)
    capacity = params.report.capacity
    to_call, value = _calls(paths, capacity, run.run_id)
    _, scores = read_run(paths, run.run_id, columns=["stage", "segment", "has_purchased"])
    exit_rows = scores["stage"] == EXIT
    out = Headline(
        run=run,
        previous=None,
        capacity=capacity,
        to_call=to_call,
        value_at_risk=value,
        to_call_before=None,
        value_before=None,
        in_exit=int(exit_rows.sum()),
        lapsed_in_exit=int((exit_rows.to_numpy() & lapsed(scores)).sum()),
        entered_exit=None,
    )
    try:
        moves = stage_transitions(paths, to_run=run.run_id)
    except LookupError:
        return out  # the first run: nothing to compare with
    out.previous = moves.from_run
    out.to_call_before, out.value_before = _calls(paths, capacity, moves.from_run.run_id)
    entered = moves.changes[moves.changes["to_stage"] == EXIT]
    out.entered_exit = len(entered)
    counts = entered["from_stage"].value_counts()
    out.entered_from = {s: int(counts[s]) for s in STAGES if s in counts.index}
    return out
