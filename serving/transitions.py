"""Stage transitions between two scoring runs, and their delivery to a webhook.

A contact whose stage differs between two runs (present in both) is a transition - the
event the product promises to act on ("automated responses to changes of engagement
level"). The list can be POSTed as JSON to ``serving.webhook_url``:

- retried ``serving.webhook_retries`` times on a network error, a 5xx or a 429, waiting
  ``serving.webhook_backoff_s`` x 2^attempt between attempts; other 4xx fail at once;
- at most once per (from run, to run, URL): a delivery acknowledged with a 2xx is
  recorded in ``<scores dir>/webhook_ledger.json`` and a later call for the same pair
  and URL does not POST again; a failed delivery is not recorded, so it can be retried.
  A lock file serialises concurrent deliveries, and each POST carries an
  ``Idempotency-Key`` header (the pair) so a receiver can drop a duplicate of its own.

What URL is allowed (:func:`check_webhook_url`): ``http`` or ``https`` with a host name
or address, any host (the webhook is the team's own system, often on the internal
network). Any other scheme (``file:``, ``ftp:``, ``gopher:``, ...), a URL without a host,
or one with spaces or control characters is a configuration error, raised before
anything is sent: it is not a failed delivery, and rerunning would not help.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from engage.config import Paths, ServingParams
from features.catalog import ENTITY_KEY
from serving.index import STAGES
from serving.runs import RunInfo, check_run_id, find_run, list_runs

LEDGER = "webhook_ledger.json"
_COLUMNS = [ENTITY_KEY, "stage", "segment", "p_purchase", "p_churn", "value_at_risk"]


WEBHOOK_SCHEMES = ("http", "https")


class WebhookError(RuntimeError):
    """The webhook did not acknowledge the delivery (after the retries)."""


def check_webhook_url(url: str) -> str:
    """Validate a webhook URL: http(s), a host, no spaces or control characters.

    Raises:
        ValueError: the message names the URL and the rule it breaks.

    """
    if not isinstance(url, str) or not url:
        raise ValueError("webhook URL is empty")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError(f"webhook URL {url!r} contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as err:
        raise ValueError(f"webhook URL {url!r} is malformed ({err})") from None
    if parts.scheme.lower() not in WEBHOOK_SCHEMES:
        raise ValueError(
            f"webhook URL {url!r}: scheme {parts.scheme or '(none)'!r} is not allowed; "
            "use http:// or https://"
        )
    if not parts.hostname:
        raise ValueError(f"webhook URL {url!r} has no host")
    return url


@dataclass
class Transitions:
    """Contacts whose stage changed between two runs.

    Attributes:
        from_run: the earlier run.
        to_run: the later run.
        changes: ``customer_id``, ``from_stage``, ``to_stage``, ``from_segment``,
            ``to_segment``, and the later run's ``p_purchase``, ``p_churn``,
            ``value_at_risk``.
        entered: contacts only in the later run (new contacts).
        left: contacts only in the earlier run.

    """

    from_run: RunInfo
    to_run: RunInfo
    changes: pd.DataFrame
    entered: int
    left: int

    def into_counts(self) -> dict[str, int]:
        """Contacts that entered each stage (the ``to_stage`` of each change), dial order."""
        from serving.index import STAGES

        counts = self.changes["to_stage"].value_counts()
        return {s: int(counts.get(s, 0)) for s in STAGES}

    def matrix(self) -> pd.DataFrame:
        """Counts of changes, from-stage rows x to-stage columns, both in dial order.

        Every stage has its row and column (Nurture, Purchase, Retention, Exit), zeros
        included, so matrices of different runs line up.
        """
        counts = pd.crosstab(self.changes["from_stage"], self.changes["to_stage"])
        stages = list(STAGES)
        return counts.reindex(index=stages, columns=stages, fill_value=0).rename_axis(
            index="from_stage", columns="to_stage"
        )

    def payload(self) -> dict:
        """The JSON document POSTed to the webhook."""
        records = self.changes.astype(object).where(self.changes.notna(), None)
        return {
            "event": "stage_transitions",
            "from_run": self.from_run.run_id,
            "to_run": self.to_run.run_id,
            "from_as_of": self.from_run.as_of.isoformat(),
            "to_as_of": self.to_run.as_of.isoformat(),
            "count": len(self.changes),
            "transitions": records.to_dict(orient="records"),
        }


def stage_transitions(
    paths: Paths, from_run: str | None = None, to_run: str | None = None
) -> Transitions:
    """Contacts whose stage changed from ``from_run`` to ``to_run``.

    Args:
        paths: resolved locations.
        from_run: the earlier run id; default: the run before ``to_run``.
        to_run: the later run id; default: the latest run.

    Raises:
        LookupError: fewer than two runs, or an unknown run id.
        ValueError: both ids name the same run, or an id is not a valid run id.

    """
    for run_id in (from_run, to_run):
        if run_id is not None:
            check_run_id(run_id)
    runs = list_runs(paths)
    later = find_run(paths, to_run)
    if from_run is None:
        before = [r for r in runs if (r.as_of, r.scored_at) < (later.as_of, later.scored_at)]
        if not before:
            raise LookupError(
                f"no scoring run before {later.run_id!r}: score two snapshots first "
                "(`engage score --as-of ...`)"
            )
        earlier = before[-1]
    else:
        earlier = find_run(paths, from_run)
    if earlier.run_id == later.run_id:
        raise ValueError(f"--from and --to are the same run {earlier.run_id!r}")
    a = pd.read_parquet(earlier.path, columns=_COLUMNS)
    b = pd.read_parquet(later.path, columns=_COLUMNS)
    both = a[[ENTITY_KEY, "stage", "segment"]].merge(
        b, on=ENTITY_KEY, how="inner", suffixes=("_from", "_to")
    )
    changed = both[both["stage_from"] != both["stage_to"]]
    changes = pd.DataFrame(
        {
            ENTITY_KEY: changed[ENTITY_KEY],
            "from_stage": changed["stage_from"],
            "to_stage": changed["stage_to"],
            "from_segment": changed["segment_from"],
            "to_segment": changed["segment_to"],
            "p_purchase": changed["p_purchase"],
            "p_churn": changed["p_churn"],
            "value_at_risk": changed["value_at_risk"],
        }
    ).reset_index(drop=True)
    return Transitions(
        from_run=earlier,
        to_run=later,
        changes=changes,
        entered=int((~b[ENTITY_KEY].isin(a[ENTITY_KEY])).sum()),
        left=int((~a[ENTITY_KEY].isin(b[ENTITY_KEY])).sum()),
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_ledger(paths: Paths) -> list[dict]:
    """Recorded deliveries (from_run, to_run, url, delivered_at, status, count)."""
    path = paths.scores_dir / LEDGER
    if not path.exists():
        return []
    return json.loads(path.read_text())["deliveries"]


def _record(paths: Paths, entry: dict) -> None:
    path = paths.scores_dir / LEDGER
    entries = [*read_ledger(paths), entry]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"deliveries": entries}, indent=2))
    os.replace(tmp, path)


@dataclass(frozen=True)
class Delivery:
    """Outcome of :func:`deliver`: ``delivered`` or ``skipped`` (already delivered)."""

    status: str
    attempts: int
    http_status: int | None
    url: str


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


def deliver(
    paths: Paths,
    transitions: Transitions,
    url: str,
    params: ServingParams,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST the transitions to ``url`` once per (from run, to run, url).

    Args:
        paths: resolved locations (the ledger lives in the scores folder).
        transitions: what to send.
        url: the webhook.
        params: ``serving`` section (retries, backoff, timeout).
        sleep: the wait between attempts (a test passes a no-op).

    Returns:
        ``skipped`` when the ledger already holds this pair and URL, else ``delivered``.

    Raises:
        ValueError: ``url`` is not an allowed webhook (:func:`check_webhook_url`);
            nothing is sent.
        WebhookError: no 2xx after ``1 + webhook_retries`` attempts, or a non-retryable
            4xx; nothing is recorded, so a later call tries again.

    """
    import httpx

    check_webhook_url(url)
    pair = {"from_run": transitions.from_run.run_id, "to_run": transitions.to_run.run_id}
    key = f"{pair['from_run']}->{pair['to_run']}"
    with _locked(paths.scores_dir / ".webhook.lock"):
        for entry in read_ledger(paths):
            if {k: entry[k] for k in pair} == pair and entry["url"] == url:
                return Delivery("skipped", 0, None, url)
        body = json.dumps(transitions.payload(), default=_json_default)
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        last = "no attempt"
        attempts = 0
        with httpx.Client(timeout=params.webhook_timeout_s) as client:
            for attempt in range(params.webhook_retries + 1):
                if attempt:
                    sleep(params.webhook_backoff_s * 2 ** (attempt - 1))
                attempts += 1
                try:
                    response = client.post(url, content=body, headers=headers)
                except httpx.HTTPError as err:
                    last = f"{type(err).__name__}: {err}"
                    continue
                if response.is_success:
                    _record(
                        paths,
                        {
                            **pair,
                            "url": url,
                            "delivered_at": pd.Timestamp.now(tz="UTC").isoformat(),
                            "status": response.status_code,
                            "count": len(transitions.changes),
                        },
                    )
                    return Delivery("delivered", attempts, response.status_code, url)
                last = f"HTTP {response.status_code}"
                if not _retryable(response.status_code):
                    break
        raise WebhookError(f"webhook {url}: not delivered after {attempts} attempt(s) ({last})")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
