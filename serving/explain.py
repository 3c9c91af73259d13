"""Reasons: the top-k SHAP contributions behind each contact's stage, in plain language.

(For a served baseline the contributions come from the model itself: exact linear SHAP
for the logistic and RFM kinds, Shapley values over BG/NBD's three inputs; see
:class:`Explainer`. The rest of this docstring is about LightGBM.)

A contact's stage is decided by one model: the appetence model for a prospect (Nurture
or Purchase), the churn model for a customer (Retention or Exit). Its reasons are the
``k`` features with the largest absolute TreeSHAP contribution to that model's margin
among those a person can act on (:func:`serving.sentences.reason_eligible`: not the
brand's own sending such as e-mails sent, not a value within
``scoring.reason_typical_tolerance`` of the typical one, not a zero contribution), each
with:

- ``feature``, its ``value`` for the contact and the ``typical`` value (median of the
  feature over the scored population of the same half, or another reference);
- ``contribution`` in log-odds; ``direction``: ``raises`` or ``lowers`` the stage
  probability (churn risk for a customer, purchase readiness for a prospect);
- ``text``, a sentence from :mod:`serving.sentences`, e.g. "hasn't opened an e-mail in
  45 days (typical customer: 6 days); raises the churn risk".

A row with fewer than ``k`` eligible features has fewer reasons.

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
from features.catalog import BTYD_INPUTS
from serving.sentences import Phrase, phrases, reason_eligible
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
_ROW_KERNEL_MAX_ROWS = 8  # up to this many rows, one row at a time (_tree_shap_row)


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


@numba.njit(cache=True)
def _tree_shap_row(
    x,
    n_features,
    node_feat,
    node_thr,
    node_miss,
    node_dleft,
    n_unique,
    path_start,
    p_node,
    p_left,
    p_pos,
    feat_start,
    l_feat,
    tab_start,
    tab,
):  # pragma: no cover - compiled; checked against _tree_shap and pred_contrib by the tests
    # One row: each split is decided once (a leaf's path shares its splits with its
    # siblings), then each leaf reads those decisions. The leaves and table entries are
    # added in the order of _tree_shap, so both give the same bits.
    go_left = np.empty(node_feat.shape[0], dtype=np.bool_)
    for j in range(node_feat.shape[0]):
        v, thr, miss = x[node_feat[j]], node_thr[j], node_miss[j]
        if np.isnan(v):
            go_left[j] = node_dleft[j] if miss != 0 else (0.0 <= thr)
        elif miss == 1 and -1e-35 <= v <= 1e-35:
            go_left[j] = node_dleft[j]
        else:
            go_left[j] = v <= thr
    out = np.zeros(n_features)
    for leaf in range(n_unique.shape[0]):
        k = n_unique[leaf]
        code = (1 << k) - 1
        for p in range(path_start[leaf], path_start[leaf + 1]):
            if go_left[p_node[p]] != p_left[p]:
                code &= ~(1 << p_pos[p])
        t0, fs = tab_start[leaf] + code * k, feat_start[leaf]
        for i in range(k):
            out[l_feat[fs + i]] += tab[t0 + i]
    return out


class TreeShap:
    """Exact path-dependent TreeSHAP of a LightGBM binary booster, via leaf tables.

    Build with :meth:`compile`, which returns None for a model it does not support.

    Attributes:
        expected_value: the base value (mean margin over the training cover).
        n_features: number of model inputs.

    """

    def __init__(
        self, expected_value: float, n_features: int, arrays: tuple, row_arrays: tuple
    ) -> None:
        self.expected_value = expected_value
        self.n_features = n_features
        self._arrays = arrays
        self._row_arrays = row_arrays

    @classmethod
    def compile(cls, booster: lgb.Booster) -> TreeShap | None:
        """Tables for every leaf of ``booster``, or None if the model is unsupported."""
        dump = booster.dump_model()
        if dump.get("num_tree_per_iteration", 1) != 1:
            return None
        leaves: list[tuple[float, list[tuple], list[int], list[float]]] = []
        nodes: list[tuple[int, float, int, bool]] = []  # every split, for one-row scoring
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
                node_id = len(nodes)
                nodes.append(
                    (
                        f,
                        float(node["threshold"]),
                        _MISSING[node["missing_type"]],
                        bool(node["default_left"]),
                    )
                )
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
                        node_id,
                    )
                    stack.append((child, [*path, step], feats2, zero2))
        if any(len(leaf[2]) > MAX_PATH_FEATURES for leaf in leaves):
            return None
        arrays = _flatten(leaves)
        n_features = dump["max_feature_idx"] + 1
        return cls(base, n_features, arrays, _row_arrays(n_features, nodes, leaves, arrays))

    def contributions(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """SHAP values (rows x features) of the rows of ``X`` (model feature order)."""
        x = np.asarray(X, dtype="float64")
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows x {self.n_features} features, got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, self.n_features))
        if len(x) <= _ROW_KERNEL_MAX_ROWS:
            # A request's few rows: the one-row kernel is ~2x faster (identical bits).
            rows = [_tree_shap_row(np.ascontiguousarray(r), *self._row_arrays) for r in x]
            return np.stack(rows)
        out = _tree_shap(np.ascontiguousarray(x.T), _BLOCK_ROWS, *self._arrays)
        return np.ascontiguousarray(out.T)


def _row_arrays(n_features: int, nodes: list[tuple], leaves: list[tuple], arrays: tuple) -> tuple:
    """The arrays :func:`_tree_shap_row` reads: the splits, and each path step's split.

    Narrow integer types: the one-row kernel is bound by memory reads.
    """
    d, path_start, _, _, _, _, p_left, p_pos, feat_start, l_feat, tab_start, tab = arrays
    cols = list(zip(*nodes, strict=True)) if nodes else [()] * 4
    return (
        n_features,
        np.array(cols[0], dtype=np.int32),
        np.array(cols[1], dtype=np.float64),
        np.array(cols[2], dtype=np.int8),
        np.array(cols[3], dtype=np.bool_),
        d,
        path_start,
        np.array([s[6] for leaf in leaves for s in leaf[1]], dtype=np.int32),
        p_left,
        p_pos.astype(np.int8),
        feat_start,
        l_feat.astype(np.int32),
        tab_start,
        tab,
    )


def _flatten(leaves: list[tuple[float, list[tuple], list[int], list[float]]]) -> tuple:
    """The leaves as the flat arrays :func:`_tree_shap` reads."""
    d = np.array([len(leaf[2]) for leaf in leaves], dtype=np.int64)
    path_start = np.concatenate([[0], np.cumsum([len(leaf[1]) for leaf in leaves])])
    steps = [s[:6] for leaf in leaves for s in leaf[1]]
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


def top_k_indices(contrib: np.ndarray, k: int, signed: bool = False) -> np.ndarray:
    """Column indices of the ``k`` largest ``|contrib|`` of each row, largest first.

    Args:
        contrib: contributions, rows x features.
        k: reasons per row (capped at the number of features).
        signed: rank ``contrib`` as given instead of its absolute value (a caller that
            has already turned contributions into sizes, with -1 for excluded ones).

    Returns:
        An int array of shape (rows, min(k, features)).

    """
    n, f = contrib.shape
    k = max(min(k, f), 0)
    if k == 0 or n == 0:
        return np.empty((n, k), dtype=np.int64)
    size = contrib if signed else np.abs(contrib)
    if k < f:
        # O(features) per row instead of a full sort; only the k survivors get sorted.
        part = np.argpartition(-size, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(f), (n, f)).copy()
    order = np.argsort(-np.take_along_axis(size, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


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
        phrases: the sentence builder of every model feature (:mod:`serving.sentences`).
        who: the population ("customer" or "prospect").
        target: what the probability means ("churn risk", "purchase readiness").
        valid: which of the k slots hold a reason (rows x k); a row with fewer eligible
            features than k has fewer reasons. None: every slot.

    """

    features: np.ndarray
    values: np.ndarray
    contributions: np.ndarray
    names: list[str]
    typical: np.ndarray
    phrases: list[Phrase]
    who: str
    target: str
    valid: np.ndarray | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def k(self) -> int:
        return self.features.shape[1]

    def _valid(self) -> np.ndarray:
        return np.ones(self.features.shape, dtype=bool) if self.valid is None else self.valid

    def _texts(self, flat_idx: np.ndarray, flat_val: np.ndarray, flat_con: np.ndarray) -> list:
        # Worded per feature, each distinct shown value once (serving/sentences.py).
        out = np.empty(len(flat_idx), dtype=object)
        raises = flat_con > 0
        # Group the positions by feature once (a sort), not one scan per feature.
        order = np.argsort(flat_idx, kind="stable")
        features, starts = np.unique(flat_idx[order], return_index=True)
        for j, lo, hi in zip(features, starts, [*starts[1:], len(order)], strict=True):
            at = order[lo:hi]
            out[at] = self.phrases[int(j)].texts(flat_val[at], raises[at], self.target)
        return out.tolist()

    def records(self, rows: slice | list[int] | np.ndarray | None = None) -> list[list[dict]]:
        """Reasons as Python dicts (one list per row), sentences included.

        Args:
            rows: which rows (default all); build sentences only for what is shown.

        """
        sel = np.arange(len(self)) if rows is None else np.arange(len(self))[rows]
        keep = self._valid()[sel]
        idx, val = self.features[sel][keep], self.values[sel][keep]
        con = self.contributions[sel][keep]
        texts = self._texts(idx, val, con)
        out, t = [], 0
        for r in range(len(sel)):
            row = []
            for _ in range(int(keep[r].sum())):
                j, v, c = int(idx[t]), float(val[t]), float(con[t])
                row.append(
                    {
                        "feature": self.names[j],
                        "value": None if math.isnan(v) else v,
                        "typical": _none_if_nan(float(self.typical[j])),
                        "contribution": c,
                        "direction": "raises" if c > 0 else "lowers",
                        "text": texts[t],
                    }
                )
                t += 1
            out.append(row)
        return out

    def to_arrow(self) -> pa.ListArray:
        """All rows as an Arrow ``list<struct>`` column (see :data:`REASON_TYPE`)."""
        n = len(self)
        keep = self._valid()
        idx, val, con = self.features[keep], self.values[keep], self.contributions[keep]
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
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), struct)


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
        self.names = list(model.input_names)
        self.typical = np.array([typical.get(n, np.nan) for n in self.names], dtype="float64")
        self.who, self.target = wording or WORDING.get(model.name, ("contact", "probability"))
        self.phrases = phrases(self.names, self.typical, self.who, params)
        for phrase in self.phrases:
            # BG/NBD's inputs of a served baseline are not catalog features.
            if phrase.name in BTYD_INPUTS:
                phrase.description = BTYD_INPUTS[phrase.name]
        self.passive = np.array([p.passive for p in self.phrases], dtype=bool)
        self.tolerance = float(params.scoring.reason_typical_tolerance)
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
        eligible = reason_eligible(inputs, self.typical, self.passive, self.tolerance)
        # Ineligible features and zero contributions rank below every eligible one.
        size = np.where(eligible & (contrib != 0), np.abs(contrib), -1.0)
        idx = top_k_indices(size, k, signed=True)
        return Reasons(
            features=idx,
            values=np.take_along_axis(inputs, idx, axis=1),
            contributions=np.take_along_axis(contrib, idx, axis=1),
            names=self.names,
            typical=self.typical,
            phrases=self.phrases,
            who=self.who,
            target=self.target,
            valid=np.take_along_axis(size, idx, axis=1) >= 0,
        )
