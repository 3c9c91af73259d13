"""The CDNOW transactions (Fader & Hardie) as purchase events.

The file ships inside the ``lifetimes`` package: 69,659 transactions by 23,570 customers
who first bought from CDNOW in the first quarter of 1997, followed until June 1998. Each
line holds a customer id, a date (YYYYMMDD), a number of CDs and a dollar amount.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from engage.schema import (
    CAMPAIGN_ID,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    FIRST_SEEN,
    VALUE,
)

CDNOW_FILE = Path("datasets") / "CDNOW_master.txt"
CDNOW_CHANNEL = "store"
_COLUMNS = ["customer", "date", "cds", "amount"]


def cdnow_path() -> Path:
    """Locate ``CDNOW_master.txt`` inside the installed ``lifetimes`` package.

    The package is found without being imported: importing it emits warnings with
    recent pandas, and only its data file is needed.

    Raises:
        FileNotFoundError: ``lifetimes`` is not installed or lacks the file.

    """
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the CDNOW data ships with the `lifetimes` package, which is not installed: "
            "pip install -e .[benchmarks]"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CDNOW_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall with: pip install -e .[benchmarks]")
    return path


def load_cdnow(path: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the CDNOW transactions as purchase events and their customers.

    Every line becomes one ``purchase`` event at 00:00 UTC of its date, with the dollar
    amount as ``value`` and channel ``store``. Lines that share a customer and a date are
    kept as separate events (each has its own id): they are separate orders in the
    source. Zero-dollar lines are kept too (a value of 0 is valid).

    Args:
        path: the whitespace-separated file; defaults to the one in ``lifetimes``.

    Returns:
        ``(events, customers)``: events in the columns of the events schema, and one row
        per customer with ``first_seen`` = the date of their first purchase.

    Raises:
        FileNotFoundError: no file given and ``lifetimes`` is not installed.
        ValueError: a line does not have a valid date or amount.

    """
    path = Path(path) if path is not None else cdnow_path()
    raw = pd.read_csv(path, sep=r"\s+", header=None, names=_COLUMNS, dtype=str)
    # The copy in lifetimes starts with a header line; the original file does not.
    if len(raw) and not raw["date"].iloc[0].isdigit():
        raw = raw.iloc[1:].reset_index(drop=True)

    dates = pd.to_datetime(raw["date"], format="%Y%m%d", utc=True, errors="coerce")
    amounts = pd.to_numeric(raw["amount"], errors="coerce")
    broken = dates.isna() | amounts.isna()
    if broken.any():
        first = int(broken.to_numpy().argmax())
        raise ValueError(
            f"{path}: {int(broken.sum())} line(s) without a valid date or amount, "
            f"first: {' '.join(raw.iloc[first].astype(str))}"
        )

    customer_ids = raw["customer"].str.zfill(5)
    width = len(str(len(raw)))
    events = pd.DataFrame(
        {
            EVENT_ID: [f"cdnow-{i:0{width}d}" for i in range(1, len(raw) + 1)],
            CUSTOMER_ID: customer_ids,
            EVENT_TIME: dates.dt.as_unit("us"),
            EVENT_TYPE: "purchase",
            VALUE: amounts.astype(float),
            CHANNEL: CDNOW_CHANNEL,
            CAMPAIGN_ID: None,
        }
    )
    customers = (
        events.groupby(CUSTOMER_ID, as_index=False)[EVENT_TIME]
        .min()
        .rename(columns={EVENT_TIME: FIRST_SEEN})
    )
    return events, customers
