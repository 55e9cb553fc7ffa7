"""Where data and results live on disk."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """Cache folder for fetched data sets: $BIOPLAUSIBLE_DATA, else the user's cache folder."""
    env = os.environ.get("BIOPLAUSIBLE_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bioplausible"


def results_home() -> Path:
    """Default results folder (the SQLite store lives here): $BIOPLAUSIBLE_RESULTS or ./results."""
    return Path(os.environ.get("BIOPLAUSIBLE_RESULTS", "results"))


# $BIOPLAUSIBLE_RESULTS/store.sqlite, else ./results/store.sqlite (read when the CLI is imported)
DEFAULT_STORE = results_home() / "store.sqlite"
