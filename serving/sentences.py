"""Reasons a person can read aloud: one sentence per (feature, value) of a contact.

The reasons of :mod:`serving.explain` are numbers (feature, value, typical value, SHAP
contribution); this module turns each into a sentence such as

- "hasn't opened an e-mail in 45 days (typical customer: 6 days); raises the churn risk"
- "12 e-mails opened in the last 30 days, far more than a typical customer (3); lowers
  the churn risk"
- "no activity in either of the last two 30-day periods; raises the churn risk"

What a feature is comes from the feature catalog (:mod:`features.catalog`: its ``kind``,
``unit``, window and the event types its SQL reads), so a new event type or window gets
sentences without code; known event types have hand-written words
(:data:`EVENT_WORDS`), any other is named from its identifier.

Rules: whole days, amounts to the unit with the currency of ``value.currency``, rates
and changes as whole percentages, durations in seconds, minutes or hours; a missing
recency reads "never", an undefined rate or trend says why it is undefined ("no e-mail
received in the last 30 days"), never "n/a" or "-1"; counts are compared with the typical
value in words. :func:`reason_eligible` decides which features may be a reason at all:
never the brand's own sending (features that read only ``features.passive_event_types``)
and never a value within ``scoring.reason_typical_tolerance`` of the typical value.

Sentences are built per feature, not per row: the values of one feature are rounded to
what the sentence shows, each distinct rounded value is worded once and the sentences
are gathered back with numpy (a few hundred distinct values for a million contacts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engage.config import Params
from features.catalog import RATE_DAYS, FeatureSpec, feature_specs, stat_columns


@dataclass(frozen=True)
class Words:
    """How sentences name an event type.

    Attributes:
        one: a noun phrase for one event ("e-mail opened").
        many: the plural ("e-mails opened").
        did: a verb phrase that reads after "last", "hasn't" and "never" ("opened an
            e-mail").
        verb: the verb alone, for rates ("opened" 45 % of the e-mails received); None
            when the type has no such verb.

    """

    one: str
    many: str
    did: str
    verb: str | None = None


EVENT_WORDS: dict[str, Words] = {
    "email_sent": Words("e-mail received", "e-mails received", "received an e-mail"),
    "email_open": Words("e-mail opened", "e-mails opened", "opened an e-mail", "opened"),
    "email_click": Words("e-mail click", "e-mail clicks", "clicked in an e-mail", "clicked in"),
    "web_visit": Words("website visit", "website visits", "visited the website"),
    "cart_add": Words("cart add", "cart adds", "added to a cart"),
    "purchase": Words("purchase", "purchases", "bought", "bought"),
    "social_interaction": Words(
        "social media interaction", "social media interactions", "interacted on social media"
    ),
    "support_ticket": Words("support ticket", "support tickets", "opened a support ticket"),
    "nps_response": Words("NPS answer", "NPS answers", "answered the NPS survey"),
    "sales_accepted": Words("acceptance by sales", "acceptances by sales", "been accepted"),
}
ACTIVITY = Words("activity", "activity", "active")


def event_words(event_type: str) -> Words:
    """The words of ``event_type``: hand-written for known types, else from its name."""
    known = EVENT_WORDS.get(event_type)
    if known is not None:
        return known
    label = event_type.replace("_", " ")
    return Words(f"{label} event", f"{label} events", f"had a {label} event")


# ----------------------------------------------------------------------- formatting


def _round(v: float) -> float:
    # Half up, not numpy's half to even: 2.5 days reads "3 days".
    return math.floor(v + 0.5)


def days(v: float) -> str:
    """Whole days: "1 day", "45 days", "less than a day"."""
    d = int(_round(v))
    if d <= 0:
        return "less than a day"
    return "1 day" if d == 1 else f"{d:,} days"


def count(n: float, one: str, many: str) -> str:
    """A whole count with its noun: "1 purchase", "12 purchases"."""
    k = int(_round(n))
    return f"1 {one}" if k == 1 else f"{k:,} {many}"


def amount(v: float, currency: str) -> str:
    """An amount to the unit with its currency: "1,235 EUR"."""
    return f"{_round(v):,.0f} {currency}"


def duration(seconds: float) -> str:
    """Seconds below 2 minutes, minutes below 2 hours, else hours (whole)."""
    s = _round(seconds)
    if s < 120:
        return "1 second" if s == 1 else f"{s:,.0f} seconds"
    if s < 7200:
        return f"{_round(s / 60):,.0f} minutes"
    return f"{_round(s / 3600):,.0f} hours"


def percent(v: float) -> str:
    """A share as a whole percentage: 0.4567 -> "46 %"."""
    return f"{_round(100 * v):,.0f} %"


def change(ratio: float) -> str:
    """A trend (recent - before) / (recent + before) as the change it means: "down 67 %"."""
    if ratio >= 1:
        return "started"
    if ratio <= -1:
        return "stopped"
    pct = _round(200 * ratio / (1 - ratio))
    if pct == 0:
        return "steady"
    return f"{'up' if pct > 0 else 'down'} {abs(pct):,.0f} %"


def number(v: float) -> str:
    """A plain number: whole when it is one, else two significant decimals at most."""
    if v == _round(v) or abs(v) >= 100:
        return f"{_round(v):,.0f}"
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"


# -------------------------------------------------------------------------- phrases


class Phrase:
    """The sentence of one feature, for any value of it.

    Args:
        spec: the feature's catalog entry (None: a feature the catalog does not know,
            worded from its name).
        name: the feature name.
        typical: its typical value (NaN: no typical clause).
        who: the population ("customer", "prospect").
        params: the parsed params.yaml (currency, passive event types).

    """

    def __init__(
        self, spec: FeatureSpec | None, name: str, typical: float, who: str, params: Params
    ) -> None:
        self.name = name
        self.typical = float(typical)
        self.who = who
        self.currency = params.value.currency
        self.kind = spec.kind if spec is not None else "other"
        self.unit = spec.unit if spec is not None else None
        self.description = spec.description if spec is not None else name.replace("_", " ")
        self.window = spec.window_days if spec is not None else None
        types = list(dict.fromkeys(t for t, _ in stat_columns([spec]))) if spec else []
        self.types = types
        passive = set(params.features.passive_event_types)
        # The brand's own sending (e-mails sent) is not something the contact did.
        self.passive = bool(types) and all(t in passive for t in types)
        if name == "days_since_last_event" or len(types) > 2:
            self.words = ACTIVITY
        else:
            self.words = event_words(types[0]) if types else Words(name, name, name)
        self.den = event_words(types[1]) if len(types) > 1 else None

    # What the sentence shows of a value; equal keys give equal sentences.
    def key(self, values: np.ndarray) -> np.ndarray:
        """``values`` rounded to what the sentence shows (NaN stays NaN)."""
        v = np.asarray(values, dtype="float64")
        with np.errstate(invalid="ignore"):
            if self.kind in ("rate", "abandonment", "inactive_share"):
                return np.floor(100 * v + 0.5) / 100
            if self.kind == "trend":
                return np.round(v, 6)
            if self.unit == "seconds":
                s = np.floor(v + 0.5)
                return np.where(
                    s < 120,
                    s,
                    np.where(
                        s < 7200, np.floor(s / 60 + 0.5) * 60, np.floor(s / 3600 + 0.5) * 3600
                    ),
                )
            if self.unit in ("days", "count", "amount", "score", "flag", "amount_per_period"):
                return np.floor(v + 0.5)
        return np.round(v, 2)

    def _in_window(self) -> str:
        return f"in the last {self.window} days" if self.window else "so far"

    def _typical(self, text: str) -> str:
        return f" (typical {self.who}: {text})"

    def _value(self, v: float) -> str:
        if self.unit == "days":
            return days(v)
        if self.unit == "amount":
            return amount(v, self.currency)
        if self.unit == "seconds":
            return duration(v)
        if self.unit in ("rate", "share"):
            return percent(v)
        if self.unit == "amount_per_period":
            return amount(v, self.currency)
        if self.unit == "ratio":
            return change(v)
        return number(v)

    def fact(self, v: float) -> str:
        """The sentence for one (rounded) value, without the effect on the probability."""
        w, t, nan = self.words, self.typical, math.isnan(v)
        typical = "" if math.isnan(t) else self._typical(self._value(t))
        k = self.kind
        if k == "recency":
            if nan:
                return "never active" if w is ACTIVITY else f"never {w.did}"
            if w is ACTIVITY:
                if not math.isnan(t) and v > t:
                    return f"no activity of their own for {days(v)}{typical}"
                return f"last active {days(v)} ago{typical}"
            if not math.isnan(t) and v > t:
                return f"hasn't {w.did} in {days(v)}{typical}"
            return f"last {w.did} {days(v)} ago{typical}"
        if k == "first":
            return f"never {w.did}" if nan else f"first {w.did} {days(v)} ago{typical}"
        if k == "tenure":
            return "first seen on an unknown date" if nan else f"known for {days(v)}{typical}"
        if k == "count":
            where = self._in_window()
            if nan or v == 0:
                return f"no {w.one} {where}{typical}"
            said = f"{count(v, w.one, w.many)} {where}"
            if math.isnan(t):
                return said
            if t == 0:
                return f"{said}, when a typical {self.who} has none"
            r = v / t
            than = (
                "far more than"
                if r >= 2
                else "more than"
                if r > 1
                else "as many as"
                if r == 1
                else "fewer than"
                if r > 0.5
                else "far fewer than"
            )
            return f"{said}, {than} a typical {self.who} ({number(t)})"
        if k == "sum":
            where = self._in_window()
            if nan or v == 0:
                return f"no {w.many} {where}{typical}"
            return f"{self._value(v)} of {w.many} {where}{typical}"
        if k == "average":
            return f"no {w.one} yet" if nan else f"average {w.one} of {self._value(v)}{typical}"
        if k == "interval":
            if nan:
                return f"fewer than two {w.many} so far"
            return f"one {w.one} every {days(v)} on average{typical}"
        if k == "rate":
            den = self.den or w
            where = self._in_window()
            if nan:
                return f"no {den.one} {where}"
            if w.verb:
                return f"{w.verb} {percent(v)} of the {den.many} {where}{typical}"
            return f"{percent(v)} {w.many} per {den.one} {where}{typical}"
        if k == "abandonment":
            buy = self.den or w
            where = self._in_window()
            if nan:
                return f"no {w.one} {where}"
            return f"{percent(v)} of the {w.many} without a {buy.one} {where}{typical}"
        if k == "last_value":
            if nan:
                return f"never {w.did}"
            return f"last {w.one}: {self._value(v)}{typical}"
        if k == "trend":
            period = f"{self.window}-day" if self.window else "two"
            if nan:
                return f"no {w.one} in either of the last two {period} periods"
            if v <= -1:
                return (
                    f"no {w.one} in the last {self.window} days after some in the "
                    f"{self.window} days before"
                )
            if v >= 1:
                return (
                    f"{w.many} in the last {self.window} days after none in the "
                    f"{self.window} days before"
                )
            moved = change(v)
            if moved == "steady":
                return f"{w.many} steady over the last two {period} periods{typical}"
            return f"{w.many} {moved} on the {self.window} days before{typical}"
        if k == "per_period":
            per = f"per {RATE_DAYS} days of known life"
            if self.unit == "amount_per_period":
                if nan or v == 0:
                    return f"no {w.many} so far{typical}"
                return f"{self._value(v)} of {w.many} {per}{typical}"
            if nan or v == 0:
                return f"no {w.many} so far{typical}"
            many = "own actions" if w is ACTIVITY else w.many
            return f"{number(v)} {many} {per}{typical}"
        if k == "overdue":
            if nan:
                return f"fewer than two {w.many} so far, no usual gap yet"
            return f"last {w.one} {number(v)} usual gaps ago{typical}"
        if k == "inactive_share":
            if nan:
                return "known life unknown"
            return f"quiet for {percent(v)} of their known life{typical}"
        if k == "flag":
            if nan:
                return f"{self.description}: unknown"
            return f"has {w.did} before" if v >= 0.5 else f"has never {w.did}"
        return f"{self.description}: {'unknown' if nan else number(v)}{typical}"

    def texts(self, values: np.ndarray, raises: np.ndarray, target: str) -> np.ndarray:
        """Sentences for many values of this feature (object array), effect included.

        Each distinct (rounded value, direction) is worded once.
        """
        keys = self.key(values)
        # NaN keys would not compare equal in np.unique: give them their own code.
        nan = np.isnan(keys)
        filled = np.where(nan, np.inf, keys)
        uniq, inverse = np.unique(filled, return_inverse=True)
        facts = [self.fact(float("nan") if math.isinf(u) and u > 0 else float(u)) for u in uniq]
        effect = (f"; lowers the {target}", f"; raises the {target}")
        table = np.array([f + e for f in facts for e in effect], dtype=object)
        return table[inverse.reshape(-1) * 2 + np.asarray(raises, dtype=np.int64)]


def phrases(names: Sequence[str], typical: np.ndarray, who: str, params: Params) -> list[Phrase]:
    """One :class:`Phrase` per feature name, from the catalog of ``params``."""
    specs = {s.name: s for s in feature_specs(params)}
    return [
        Phrase(specs.get(n), n, float(t), who, params) for n, t in zip(names, typical, strict=True)
    ]


def reason_eligible(
    x: np.ndarray, typical: np.ndarray, passive: np.ndarray, tolerance: float
) -> np.ndarray:
    """Which (row, feature) may be a reason: not the brand's own sending, not typical.

    Args:
        x: rows x features, the contacts' values (NaN = not observed).
        typical: the typical value of each feature (NaN = unknown).
        passive: per feature, True when it only counts what the brand sent.
        tolerance: a value with ``|value - typical| <= tolerance x |typical|`` is typical
            (both missing counts as typical too; an unknown typical never does).

    Returns:
        A boolean matrix of the shape of ``x``.

    """
    t = np.asarray(typical, dtype="float64")[None, :]
    with np.errstate(invalid="ignore"):
        near = np.abs(x - t) <= tolerance * np.abs(t)
    near |= np.isnan(x) & np.isnan(t)
    return ~near & ~np.asarray(passive, dtype=bool)[None, :]
