"""How a user's export becomes events without code: columns, event names, ids.

A shop export rarely speaks the event schema: its columns are called ``user_id`` or
``timestamp``, its event names ``page_view`` or ``order``, it has no event id, and a
purchases-only file has no event type at all. :class:`EventMapping` holds what turns
such a file into events: the column mapping (``--map their_col=field``), the event-name
mapping (``--map-event theirs=ours``), a constant event type for the whole file
(``--event-type purchase``), and whether the file carries amounts (``--no-amounts``).
It can also be read from a YAML file (``--mapping FILE``, see :func:`read_mapping_file`);
options on the command line are added to (and, for the same key, override) the file.

:func:`derive_event_ids` gives rows without an id a stable one, computed from the row's
content, so ingesting the same file twice does not duplicate its events.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from engage.schema import (
    CAMPAIGN_ID,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_TIME,
    EVENT_TYPE,
    EVENTS_SCHEMA,
    VALUE,
)

FIELDS = tuple(EVENTS_SCHEMA.names)
# The content a derived id is computed from, in this order.
ID_CONTENT = (CUSTOMER_ID, EVENT_TIME, EVENT_TYPE, VALUE, CHANNEL, CAMPAIGN_ID)
DERIVED_PREFIX = "h:"  # derived ids are told apart from a file's own ids by this prefix
MAPPING_KEYS = ("columns", "event_types", "event_type", "no_amounts")
MAX_MAPPING_BYTES = 1 << 20


# Names shop and CRM exports commonly use for the built-in event types: only hints (the
# closest allowed value shown next to an unknown name), never applied without a mapping.
SYNONYMS = {
    "purchase": ("order", "orders", "transaction", "checkout", "buy", "sale", "payment"),
    "web_visit": ("page_view", "pageview", "view", "visit", "session", "page"),
    "cart_add": ("add_to_cart", "add_to_basket", "basket_add", "cart"),
    "email_open": ("open", "opened", "mail_open"),
    "email_click": ("click", "clicked", "mail_click"),
    "email_sent": ("send", "sent", "delivered", "mail_sent"),
    "support_ticket": ("ticket", "complaint", "support"),
    "nps_response": ("nps", "survey", "review"),
}


def closest(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed value closest to ``value``, or None when none is close.

    Case and separators are ignored first (``Web-Visit`` is ``web_visit``), then a few
    common export names are recognised (``order`` is ``purchase``, ``page_view`` is
    ``web_visit``), then :func:`difflib.get_close_matches` decides by spelling
    (``purchse`` is ``purchase``).
    """
    allowed = list(allowed)
    folded = {_fold(a): a for a in allowed}
    key = _fold(value)
    if key in folded:
        return folded[key]
    for target, names in SYNONYMS.items():
        if target in allowed and key in {_fold(n) for n in names}:
            return target
    found = difflib.get_close_matches(str(value).lower(), allowed, n=1, cutoff=0.6)
    return found[0] if found else None


def _fold(text: str) -> str:
    return "".join(ch for ch in str(text).lower() if ch.isalnum())


def _pairs(items: Iterable[str], what: str, example: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        # Split on the last "=": our names never contain one, theirs might.
        source, sep, target = str(item).rpartition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target:
            raise ValueError(f"{what} {item!r} must look like {example}")
        out.append((source, target))
    return out


def parse_event_mapping(items: Iterable[str]) -> dict[str, str]:
    """Parse ``theirs=ours`` strings (``--map-event``) into ``{their name: event type}``.

    Several names may map to one event type (``view=web_visit``, ``visit=web_visit``).

    Raises:
        ValueError: an item is not ``theirs=ours`` or maps a name twice; the message
            names the item.

    """
    mapping: dict[str, str] = {}
    for source, target in _pairs(items, "--map-event", "their_name=event_type"):
        if source in mapping and mapping[source] != target:
            raise ValueError(
                f"--map-event {source}={target}: {source!r} is already mapped to "
                f"{mapping[source]!r}"
            )
        mapping[source] = target
    return mapping


@dataclass(frozen=True)
class EventMapping:
    """What turns a user's file into events (see the module docstring).

    ``columns`` maps the file's column names to event fields, ``event_types`` the file's
    event names to the vocabulary (``data.event_types``), ``event_type`` is the one type
    of every row when the file has no type column, and ``no_amounts`` says the file's
    conversion events carry no amount (they are stored without a value, and the store
    records that its money figures are unknown).
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    event_types: Mapping[str, str] = field(default_factory=dict)
    event_type: str | None = None
    no_amounts: bool = False

    def merged(self, other: EventMapping) -> EventMapping:
        """This mapping with ``other`` on top (the command line over a mapping file)."""
        columns = {k: v for k, v in self.columns.items() if v not in other.columns.values()}
        columns.update(other.columns)
        return EventMapping(
            columns=columns,
            event_types={**self.event_types, **other.event_types},
            event_type=other.event_type or self.event_type,
            no_amounts=self.no_amounts or other.no_amounts,
        )

    def check(self, event_types: Iterable[str]) -> None:
        """Check the mapping against the fields and the event vocabulary.

        Raises:
            ValueError: an unknown target field, a field or column mapped twice, an
                event name mapped to a type outside ``event_types`` (the message lists
                the allowed types and the closest one), or a constant event type that
                is unknown or comes with a column mapped to ``event_type``.

        """
        allowed = list(event_types)
        seen: dict[str, str] = {}
        for source, target in self.columns.items():
            if target not in FIELDS:
                raise ValueError(
                    f"column mapping {source}={target}: unknown field {target!r} "
                    f"(fields: {', '.join(FIELDS)})"
                )
            if target in seen:
                raise ValueError(
                    f"column mapping {source}={target}: field {target!r} is already mapped "
                    f"from {seen[target]!r}"
                )
            seen[target] = source
        for source, target in self.event_types.items():
            if target not in allowed:
                raise ValueError(
                    f"--map-event {source}={target}: {target!r} is not an event type"
                    f"{_hint(target, allowed)} (allowed: {', '.join(allowed)}; add a type of "
                    "your own to data.event_types, e.g. --set 'data.event_types=[...]')"
                )
        if self.event_type is not None:
            if self.event_type not in allowed:
                raise ValueError(
                    f"--event-type {self.event_type}: not an event type"
                    f"{_hint(self.event_type, allowed)} (allowed: {', '.join(allowed)})"
                )
            if EVENT_TYPE in seen:
                raise ValueError(
                    f"--event-type {self.event_type} and the column {seen[EVENT_TYPE]!r} "
                    "mapped to event_type: give one or the other"
                )


def _hint(value: str, allowed: Iterable[str]) -> str:
    near = closest(value, allowed)
    return f" (did you mean {near!r}?)" if near and near != value else ""


def read_mapping_file(path: Path) -> EventMapping:
    """Read a mapping file (YAML).

    The file may hold ``columns`` (their column: field), ``event_types`` (their event
    name: event type), ``event_type`` (one type for every row) and ``no_amounts``
    (true/false); every key is optional::

        columns: {user_id: customer_id, timestamp: event_time, event_name: event_type,
                  amount: value}
        event_types: {page_view: web_visit, add_to_basket: cart_add, order: purchase}

    Raises:
        ValueError: the file is missing, not YAML, not a mapping, has an unknown key, or
            a value of the wrong kind; the message names the file and the key.

    """
    import yaml

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"mapping file {path} not found") from None
    except OSError as err:
        raise ValueError(f"mapping file {path}: cannot read it ({err.strerror or err})") from None
    if len(data) > MAX_MAPPING_BYTES:
        raise ValueError(f"mapping file {path}: over {MAX_MAPPING_BYTES:,} bytes")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"mapping file {path}: not valid YAML ({err})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ValueError(f"mapping file {path}: expected keys {', '.join(MAPPING_KEYS)}")
    unknown = [str(k) for k in doc if k not in MAPPING_KEYS]
    if unknown:
        raise ValueError(
            f"mapping file {path}: unknown key(s) {', '.join(unknown)} "
            f"(keys: {', '.join(MAPPING_KEYS)})"
        )
    return EventMapping(
        columns=_text_dict(doc.get("columns"), path, "columns"),
        event_types=_text_dict(doc.get("event_types"), path, "event_types"),
        event_type=_text_or_none(doc.get("event_type"), path, "event_type"),
        no_amounts=_flag(doc.get("no_amounts", False), path),
    )


def _text_dict(value: Any, path: Path, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, str | int) and isinstance(k, str | int) for k, v in value.items()
    ):
        raise ValueError(f"mapping file {path}: {key} must map names to names")
    return {str(k).strip(): str(v).strip() for k, v in value.items()}


def _text_or_none(value: Any, path: Path, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"mapping file {path}: {key} must be an event type name")
    return value.strip()


def _flag(value: Any, path: Path) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"mapping file {path}: no_amounts must be true or false")
    return value


def map_event_names(df: pd.DataFrame, mapping: EventMapping) -> tuple[pd.DataFrame, list[str]]:
    """Apply the event-name mapping and the constant event type to ``df``.

    ``df`` has schema column names (after :func:`engage.data.ingest.apply_mapping`).
    Names are matched after trimming surrounding spaces; names the mapping does not
    cover are kept as they are (validation then reports those not in the vocabulary).

    Returns:
        The frame and notes saying what was mapped (one per event name, with its count).

    Raises:
        ValueError: the file has an event-type column and ``mapping.event_type`` is set.

    """
    notes: list[str] = []
    out = df.copy()
    if mapping.event_type is not None:
        if EVENT_TYPE in out.columns:
            raise ValueError(
                f"--event-type {mapping.event_type}: the file already has an event_type "
                "column; map its names with --map-event instead"
            )
        out[EVENT_TYPE] = mapping.event_type
        notes.append(f"event_type: every row is {mapping.event_type!r} (--event-type)")
        return out, notes
    if mapping.event_types and EVENT_TYPE in out.columns:
        names = out[EVENT_TYPE].map(lambda v: v.strip() if isinstance(v, str) else v)
        mapped = names.map(mapping.event_types)
        hit = mapped.notna()
        counts = names[hit].value_counts()
        for name, n in counts.items():
            notes.append(f"event_type: {n:,} {name!r} -> {mapping.event_types[name]!r}")
        out[EVENT_TYPE] = mapped.where(hit, out[EVENT_TYPE])
    return out, notes


def _cell_text(values: pd.Series) -> pd.Series:
    """Each cell as trimmed text ('' for missing): what a derived id is computed from."""
    present = values.notna()
    text = values.astype(object).where(present, "")
    if pd.api.types.is_datetime64_any_dtype(values):
        text = values.map(lambda t: t.isoformat() if pd.notna(t) else "")
    return text.astype(str).str.strip()


def derive_event_ids(df: pd.DataFrame) -> pd.Series:
    """A stable event id per row, from its content, for files without an event id.

    The id is a hash of the row's customer, time, type, value, channel and campaign (as
    the file gives them, trimmed) and of the row's occurrence among identical rows of
    the file: two identical rows of one file (two equal orders in the same second) stay
    two events, while ingesting the same file again gives the same ids, which are then
    already in the store instead of new events.

    Returns:
        ``h:`` and 24 hex digits per row (96 bits: a collision among a billion events
        has a probability below 1e-10), in ``df``'s order and index.

    """
    columns = [c for c in ID_CONTENT if c in df.columns]
    cells = [_cell_text(df[c]).tolist() for c in columns]
    seen: dict[str, int] = {}
    ids = []
    # One pass in plain Python: the occurrence count and the hash per row, without the
    # intermediate string columns and the grouping a pandas version needs.
    for row in zip(*cells, strict=True):
        # The unit separator cannot appear in a trimmed cell of text, so joined fields
        # never collide ("a|b", "c" against "a", "b|c").
        key = "\x1f".join(row)
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        digest = hashlib.blake2b(f"{key}\x1f{occurrence}".encode(), digest_size=12)
        ids.append(DERIVED_PREFIX + digest.hexdigest())
    return pd.Series(ids, index=df.index, dtype=object)
