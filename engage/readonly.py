"""Read-only access to the SQLite stores (MLflow registry, Feast online store).

``sqlite3.connect(path)`` creates a missing file, and MLflow's or Feast's own clients
create tables on first use. Whatever only *reads* a store (the prediction service, its
start-up checks) opens it with SQLite's ``mode=ro`` URI instead, after checking that the
file exists, so a wrong path is reported rather than silently answered by a new empty
store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote


def readonly_sqlite(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing SQLite file; never creates it.

    The connection may be shared by threads (``check_same_thread=False``): the service
    reads from BentoML's thread pool, one request at a time per connection use.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        sqlite3.Error: SQLite cannot open it.

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    # quote(): a '?' or '#' in the path would otherwise end the file name in the URI.
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False)


__all__ = ["readonly_sqlite"]
