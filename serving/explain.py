"""Reasons: the top-k SHAP contributions behind each contact's stage, in plain language.

(For a served baseline the contributions come from the model itself: exact linear SHAP
for the logistic and RFM kinds, Shapley values over BG/NBD's three inputs; see
:class:`Explainer`. The rest of this docstring is about LightGBM.)

A contact's stage is decided by one model: the appetence model for a prospect (Nurture
or Purchase), the churn model for a customer (Retention or Exit). Its reasons are the
``k`` features with the largest absolute TreeSHAP contribution to that model's margin,
each with:

- ``feature``, its ``value`` for the contact and the ``typical`` value (median of the
  feature over the scored population of the same half, or another reference);
- ``contribution`` in log-odds; ``direction``: ``raises`` or ``lowers`` the stage
  probability (churn risk for a customer, purchase readiness for a prospect);
- ``text``, e.g. "days since the last email open: 45 (typical customer: 6); raises the
  churn risk" (the typical clause is left out when there is no typical value).

The numeric part is vectorised over all rows (``np.argpartition``); sentences are built
only when asked for (:meth:`Reasons.records`, :meth:`Reasons.to_arrow`).

The contributions are exact path-dependent TreeSHAP values - what LightGBM's
``pred_contrib`` and ``shap.TreeExplainer`` return - computed by :class:`TreeShap`,
about 10x faster than ``pred_contrib``, which costs O(leaves x depth^2) per tree and row
and would take most of an hour for a million contacts on two cores. The speed-up comes
from the structure of the values: a leaf with ``d`` distinct features on its path
contributes to the row only through which of those features the row "agrees" with (goes
the leaf's way at every split on it), a d-bit pattern. So each leaf gets a table of its
contribution to each of its features for each of the 2^d patterns, computed once per
model from the Shapley formula of the path-dependent expectation::

    phi_i += v * (o_i - z_i) * sum over S subset of {j in A, j != i} of
             |S|! (d - |S| - 1)! / d!  *  prod over j not in S, j != i of z_j

(v: leaf value; z_j: product of the cover ratios of the splits on j along the path;
o_j: 1 if the row agrees with every split on j; A: the features with o_j = 1). Scoring a
row is then, per leaf, a few comparisons and d table look-ups, in a compiled (numba)
loop over blocks of rows that keeps each table in cache. Models it cannot handle
(categorical or linear-tree leaves, more than :data:`MAX_PATH_FEATURES` features on a
path, multi-class) fall back to ``pred_contrib``; tests check both agree to 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import lightgbm as lgb
import numba
import numpy as np
import pandas as pd
import pyarrow as pa

from engage.config import Params
from features.catalog import BTYD_INPUTS, feature_specs
from training.model import EngageModel

# Model -> (who its population is, what its probability means), for the sentences.
WORDING = {
    "churn": ("customer", "churn risk"),
    "appetence": ("prospect", "purchase readiness"),
}
REASON_TYPE = pa.struct(
    [
        ("feature", pa.string()),
        ("value", pa.float64()),
        ("typical", pa.float64()),
        ("contribution", pa.float64()),
        ("direction", pa.string()),
        ("text", pa.string()),
    ]
)


# A leaf whose path splits on more distinct features than this would need a 2^d table.
MAX_PATH_FEATURES = 12
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
_BLOCK_ROWS = 1024  # rows per block of the compiled loop: a leaf's table stays in cache


def _leaf_tables(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Contribution tables of m leaves with the same d path features: (m, 2^d, d).

    Args:
        z: zero fractions (m, d): the share of the leaf's cover kept by each feature's
            splits when the feature is unknown.
        v: leaf values (m,).

    Returns:
        ``t[leaf, pattern, i]``: the contribution to the i-th path feature of a row whose
        agreement bits are ``pattern`` (bit i set = the row follows the splits on it).

    """
    m, d = z.shape
    n = 1 << d
    bits = ((np.arange(n)[:, None] >> np.arange(d)) & 1).astype(bool)  # (pattern, feature)
    size = bits.sum(axis=1)
    fact = np.array([math.factorial(k) for k in range(d + 1)], dtype=float)
    # Shapley weight |S|! (d - |S| - 1)! / d! of a coalition S not holding the feature.
    weight = np.where(size < d, fact[size] * fact[np.maximum(d - size - 1, 0)] / fact[d], 0.0)
    unknown = np.where(bits[None, :, :], 1.0, z[:, None, :])  # z_j for j outside S
    terms = np.empty((m, n, d))
    for i in range(d):
        f = unknown.copy()
        f[:, :, i] = 1.0
        terms[:, :, i] = np.where(bits[None, :, i], 0.0, weight[None, :] * f.prod(axis=2))
    # Sum over the coalitions inside each pattern (S within o): a cumulative sum along
    # every bit of the pattern, O(2^d d) instead of a 2^d x 2^d product.
    total = terms.reshape((m, *([2] * d), d))
    for axis in range(1, d + 1):
        total = np.cumsum(total, axis=axis)
    total = total.reshape(m, n, d)
    return v[:, None, None] * (bits[None, :, :] - z[:, None, :]) * total


@numba.njit(parallel=True, cache=True)
def _tree_shap(
    xt,
    block,
    n_unique,
    path_start,
    p_feat,
    p_thr,
    p_miss,
    p_dleft,
    p_left,
    p_pos,
    feat_start,
    l_feat,
    tab_start,
    tab,
):  # pragma: no cover - compiled; checked against pred_contrib by the tests
    n_features, n = xt.shape
    out = np.zeros((n_features, n))
    n_blocks = (n + block - 1) // block
    for b in numba.prange(n_blocks):
        lo = b * block
        rows = min(n, lo + block) - lo
        codes = np.empty(rows, dtype=np.int64)
        for leaf in range(n_unique.shape[0]):
            k = n_unique[leaf]
            full = (1 << k) - 1
            for r in range(rows):
                codes[r] = full
            for p in range(path_start[leaf], path_start[leaf + 1]):
                f, thr, miss, dleft = p_feat[p], p_thr[p], p_miss[p], p_dleft[p]
                want, clear = p_left[p], ~(1 << p_pos[p])
                # LightGBM's NumericalDecision: NaN goes the default way unless missing
                # values are "None" (then NaN counts as 0); "Zero" sends ~0 the default way.
                nan_left = dleft if miss != 0 else (0.0 <= thr)
                for r in range(rows):
                    x = xt[f, lo + r]
                    if np.isnan(x):
                        left = nan_left
                    elif miss == 1 and -1e-35 <= x <= 1e-35:
                        left = dleft
                    else:
                        left = x <= thr
                    if left != want:
                        codes[r] &= clear
            t0, fs = tab_start[leaf], feat_start[leaf]
            for i in range(k):
                f = l_feat[fs + i]
                for r in range(rows):
                    out[f, lo + r] += tab[t0 + codes[r] * k + i]
    return out


class TreeShap:
    """Exact path-dependent TreeSHAP of a LightGBM binary booster, via leaf tables.

    Build with :meth:`compile`, which returns None for a model it does not support.

    Attributes:
        expected_value: the base value (mean margin over the training cover).
        n_features: number of model inputs.

    """

    def __init__(self, expected_value: float, n_features: int, arrays: tuple) -> None:
        self.expected_value = expected_value
        self.n_features = n_features
        self._arrays = arrays

    @classmethod
    def compile(cls, booster: lgb.Booster) -> TreeShap | None:
        """Tables for every leaf of ``booster``, or None if the model is unsupported."""
        dump = booster.dump_model()
        if dump.get("num_tree_per_iteration", 1) != 1:
            return None
        leaves: list[tuple[float, list[tuple], list[int], list[float]]] = []
        base = 0.0
        for info in dump["tree_info"]:
            root = info["tree_structure"]
            if "split_feature" not in root:  # a single-leaf tree only shifts the base
                base += root["leaf_value"]
                continue
            total = root["internal_count"]
            stack = [(root, [], [], [])]
            while stack:
                node, path, feats, zero = stack.pop()
                if "split_feature" not in node:
                    if "leaf_coeff" in node:
                        return None  # linear trees
                    base += node["leaf_value"] * node["leaf_count"] / total
                    leaves.append((node["leaf_value"], path, feats, zero))
                    continue
                if node["decision_type"] != "<=":
                    return None  # categorical split
                f, count = node["split_feature"], node["internal_count"]
                for child, go_left in ((node["left_child"], True), (node["right_child"], False)):
                    cover = child.get("internal_count", child.get("leaf_count"))
                    ratio = cover / count
                    feats2, zero2 = list(feats), list(zero)
                    if f in feats2:  # a feature split on twice: one bit, ratios multiply
                        pos = feats2.index(f)
                        zero2[pos] *= ratio
                    else:
                        pos = len(feats2)
                        feats2.append(f)
                        zero2.append(ratio)
                    step = (
                        f,
                        float(node["threshold"]),
                        _MISSING[node["missing_type"]],
                        bool(node["default_left"]),
                        go_left,
                        pos,
                    )
                    stack.append((child, [*path, step], feats2, zero2))
        if any(len(leaf[2]) > MAX_PATH_FEATURES for leaf in leaves):
            return None
        return cls(base, dump["max_feature_idx"] + 1, _flatten(leaves))

    def contributions(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """SHAP values (rows x features) of the rows of ``X`` (model feature order)."""
        x = np.asarray(X, dtype="float64")
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows x {self.n_features} features, got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, self.n_features))
        out = _tree_shap(np.ascontiguousarray(x.T), _BLOCK_ROWS, *self._arrays)
        return np.ascontiguousarray(out.T)


def _flatten(leaves: list[tuple[float, list[tuple], list[int], list[float]]]) -> tuple:
    """The leaves as the flat arrays :func:`_tree_shap` reads."""
    d = np.array([len(leaf[2]) for leaf in leaves], dtype=np.int64)
    path_start = np.concatenate([[0], np.cumsum([len(leaf[1]) for leaf in leaves])])
    steps = [s for leaf in leaves for s in leaf[1]]
    cols = list(zip(*steps, strict=True)) if steps else [()] * 6
    p_feat, p_thr, p_miss, p_dleft, p_left, p_pos = (
        np.array(c, dtype=t)
        for c, t in zip(
            cols, (np.int64, np.float64, np.int64, np.bool_, np.bool_, np.int64), strict=True
        )
    )
    feat_start = np.concatenate([[0], np.cumsum(d)]).astype(np.int64)
    l_feat = np.array([f for leaf in leaves for f in leaf[2]], dtype=np.int64)
    tab_start = np.concatenate([[0], np.cumsum(d * (1 << d))]).astype(np.int64)
    tab = np.empty(int(tab_start[-1]))
    for k in np.unique(d):
        idx = np.flatnonzero(d == k)
        zero = np.array([leaves[i][3] for i in idx], dtype=float).reshape(len(idx), int(k))
        value = np.array([leaves[i][0] for i in idx], dtype=float)
        tables = _leaf_tables(zero, value)
        for j, i in enumerate(idx):
            tab[tab_start[i] : tab_start[i + 1]] = tables[j].ravel()
    return (
        d,
        path_start.astype(np.int64),
        p_feat,
        p_thr,
        p_miss,
        p_dleft,
        p_left,
        p_pos,
        feat_start,
        l_feat,
        tab_start,
        tab,
    )


def top_k_indices(contrib: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest ``|contrib|`` of each row, largest first.

    Args:
        contrib: contributions, rows x features.
        k: reasons per row (capped at the number of features).

    Returns:
        An int array of shape (rows, min(k, features)).

    """
    n, f = contrib.shape
    k = max(min(k, f), 0)
    if k == 0 or n == 0:
        return np.empty((n, k), dtype=np.int64)
    size = np.abs(contrib)
    if k < f:
        # O(features) per row instead of a full sort; only the k survivors get sorted.
        part = np.argpartition(-size, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(f), (n, f)).copy()
    order = np.argsort(-np.take_along_axis(size, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def format_value(name: str, value: float) -> str:
    """A feature value for a sentence: compact numbers, "never" for a missing recency."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "never" if name.startswith("days_since_") else "n/a"
    v = float(value)
    if v == round(v) or abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:,.1f}"
    return f"{v:.2f}"


def typical_values(reference: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Median of each feature over ``reference`` (NaN ignored; NaN if all missing)."""
    return reference[features].astype("float64").median(skipna=True).to_numpy()


@dataclass
class Reasons:
    """The top-k contributions of a set of rows (numeric arrays, rows x k).

    Attributes:
        features: feature index into ``names``.
        values: the contact's value of each feature.
        contributions: the SHAP contribution (log-odds).
        names: the model's feature names.
        typical: the typical value of every model feature.
        descriptions: plain-language description of every model feature.
        who: the population ("customer" or "prospect").
        target: what the probability means ("churn risk", "purchase readiness").

    """

    features: np.ndarray
    values: np.ndarray
    contributions: np.ndarray
    names: list[str]
    typical: np.ndarray
    descriptions: list[str]
    who: str
    target: str

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def k(self) -> int:
        return self.features.shape[1]

    def _texts(self, flat_idx: np.ndarray, flat_val: np.ndarray, flat_con: np.ndarray) -> list:
        # Per-feature prefixes and typical strings are built once, not per row.
        head = [f"{d}: " for d in self.descriptions]
        # Without a typical value (no reference, or nobody has one) the clause is left out.
        tail = [
            "; " if np.isnan(t) else f" (typical {self.who}: {format_value(n, t)}); "
            for n, t in zip(self.names, self.typical, strict=True)
        ]
        raises, lowers = f"raises the {self.target}", f"lowers the {self.target}"
        names = self.names
        return [
            head[j] + format_value(names[j], v) + tail[j] + (raises if c > 0 else lowers)
            for j, v, c in zip(flat_idx.tolist(), flat_val.tolist(), flat_con.tolist(), strict=True)
        ]

    def records(self, rows: slice | list[int] | np.ndarray | None = None) -> list[list[dict]]:
        """Reasons as Python dicts (one list per row), sentences included.

        Args:
            rows: which rows (default all); build sentences only for what is shown.

        """
        sel = np.arange(len(self)) if rows is None else np.arange(len(self))[rows]
        idx, val = self.features[sel], self.values[sel]
        con = self.contributions[sel]
        texts = self._texts(idx.ravel(), val.ravel(), con.ravel())
        out, t = [], 0
        for r in range(len(sel)):
            row = []
            for c in range(self.k):
                j, v = int(idx[r, c]), float(val[r, c])
                row.append(
                    {
                        "feature": self.names[j],
                        "value": None if math.isnan(v) else v,
                        "typical": _none_if_nan(float(self.typical[j])),
                        "contribution": float(con[r, c]),
                        "direction": "raises" if con[r, c] > 0 else "lowers",
                        "text": texts[t],
                    }
                )
                t += 1
            out.append(row)
        return out

    def to_arrow(self) -> pa.ListArray:
        """All rows as an Arrow ``list<struct>`` column (see :data:`REASON_TYPE`)."""
        n, k = self.features.shape
        idx, val, con = (a.ravel() for a in (self.features, self.values, self.contributions))
        names = np.asarray(self.names, dtype=object)
        struct = pa.StructArray.from_arrays(
            [
                pa.array(names[idx], type=pa.string()),
                pa.array(val, type=pa.float64(), from_pandas=True),
                pa.array(self.typical[idx], type=pa.float64(), from_pandas=True),
                pa.array(con, type=pa.float64()),
                pa.array(np.where(con > 0, "raises", "lowers"), type=pa.string()),
                pa.array(self._texts(idx, val, con), type=pa.string()),
            ],
            fields=list(REASON_TYPE),
        )
        offsets = pa.array(np.arange(n + 1, dtype=np.int64) * k, type=pa.int32())
        return pa.ListArray.from_arrays(offsets, struct)


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else v


class Explainer:
    """Top-k SHAP reasons of one model.

    The reasons are over the model's inputs (:attr:`training.model.EngageModel.input_names`:
    its snapshot features, plus BG/NBD's P(alive) and expected purchases when a LightGBM
    model reads them). Contributions are exact for every kind: TreeSHAP for LightGBM,
    ``coef * (term - mean term)`` for the linear baselines (logistic, recency alone, RFM),
    Shapley values over BG/NBD's three inputs for the ``bgnbd`` baseline.

    Args:
        model: the model whose decisions are explained.
        params: the parsed params.yaml (for the feature descriptions).
        typical: the typical value per feature name (e.g. medians of the scored
            population of the model's half); features not given are NaN.
        wording: (population, target) for the sentences; default from the model name.
        fast: use :class:`TreeShap` when the model allows it (else ``pred_contrib``).

    """

    def __init__(
        self,
        model: EngageModel,
        params: Params,
        typical: Mapping[str, float],
        wording: tuple[str, str] | None = None,
        fast: bool = True,
    ) -> None:
        self.model = model
        described = {s.name: s.description for s in feature_specs(params)}
        described.update(BTYD_INPUTS)
        self.names = list(model.input_names)
        self.descriptions = [described.get(n, n.replace("_", " ")) for n in self.names]
        self.typical = np.array([typical.get(n, np.nan) for n in self.names], dtype="float64")
        self.who, self.target = wording or WORDING.get(model.name, ("contact", "probability"))
        self.tree_shap = (
            TreeShap.compile(model.booster) if fast and model.kind == "lightgbm" else None
        )

    def _contributions(self, x: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        if self.tree_shap is not None:
            return self.tree_shap.contributions(inputs)
        return self.model.contributions_matrix(x)[0]

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """SHAP values of the rows of ``X`` (rows x model inputs), fast path if possible."""
        x = self.model.frame(X).to_numpy(dtype="float64")
        return self._contributions(x, self.model.inputs_matrix(x))

    def reasons(self, X: pd.DataFrame, k: int, contrib: np.ndarray | None = None) -> Reasons:
        """The top-``k`` contributions of each row of ``X`` (vectorised).

        Args:
            X: the rows (any column order; the model's features are picked).
            k: reasons per row.
            contrib: the rows' contributions if already computed (rows x model inputs).

        """
        x = self.model.frame(X).to_numpy(dtype="float64")
        return self.reasons_matrix(x, k, contrib)

    def reasons_matrix(self, x: np.ndarray, k: int, contrib: np.ndarray | None = None) -> Reasons:
        """:meth:`reasons` on a float matrix whose columns are the model's features, in order.

        The service's hot path: no DataFrame is built when TreeSHAP is compiled.
        """
        n_features = len(self.model.features)
        if x.ndim != 2 or x.shape[1] != n_features:
            raise ValueError(f"reasons_matrix: expected (rows, {n_features}), got {x.shape}")
        inputs = self.model.inputs_matrix(x)
        if contrib is None:
            contrib = self._contributions(x, inputs)
        idx = top_k_indices(contrib, k)
        return Reasons(
            features=idx,
            values=np.take_along_axis(inputs, idx, axis=1),
            contributions=np.take_along_axis(contrib, idx, axis=1),
            names=self.names,
            typical=self.typical,
            descriptions=self.descriptions,
            who=self.who,
            target=self.target,
        )
