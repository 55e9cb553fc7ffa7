"""The MANIFEST.json a fetched cache folder holds (sha256 of every file): read by the loaders
(`data.folder_digest`) and written by `data.fetch`, so neither imports the other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None
