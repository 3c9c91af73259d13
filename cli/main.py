"""The ``engage`` console script: every command group of :mod:`cli.app`, assembled.

Importing a command module registers its commands on the app; this is the only module
that imports them all, so ``cli.app`` stays free of the command modules.
"""

from __future__ import annotations

from cli import bench, browse, data, features, models, monitor, pipeline, scoring, serve  # noqa: F401
from cli.app import app

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app()
