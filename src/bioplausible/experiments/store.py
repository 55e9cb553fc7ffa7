"""The results store: one SQLite file, one row per run, per-epoch metrics beside it.

Knows nothing of torch. Each run is written in one transaction when it ends (done,
diverged or failed), so a run killed half-way leaves no row and is simply run again: a
sweep that is interrupted and restarted ends with exactly one row per grid cell.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,          -- RunConfig.key(): hash of the experiment's identity
    rule TEXT NOT NULL, model TEXT NOT NULL, data TEXT NOT NULL, seed INTEGER NOT NULL,
    config TEXT NOT NULL,         -- JSON of the full RunConfig
    status TEXT NOT NULL CHECK (status IN ('done', 'diverged', 'failed')),
    reason TEXT,
    metrics TEXT NOT NULL,        -- JSON: test_acc, val_acc, best_val_test_acc, train_loss, ...
    versions TEXT NOT NULL,       -- JSON: python, torch, numpy, bioplausible
    git_commit TEXT,
    device TEXT,
    started TEXT, finished TEXT,
    wall_time REAL,               -- seconds, whole run including evaluation
    train_time REAL,              -- seconds spent in train_step only
    samples_per_s REAL,           -- training samples / train_time
    epoch_time REAL,              -- mean seconds per epoch (training only)
    checkpoint TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, val_acc REAL, test_acc REAL,
    epoch_time REAL, extra TEXT,
    PRIMARY KEY (run_id, epoch)
);
"""

JSON_COLUMNS = ("config", "metrics", "versions")


class StoreError(ValueError):
    pass


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self.connect()
        try:
            con.executescript(SCHEMA)  # idempotent; executescript manages its own commit
        finally:
            con.close()

    def connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open results store {self.path}: {e}") from None
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys = ON")
        con.execute("PRAGMA journal_mode = WAL")  # readers (reports) never block a writer
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error)."""
        con = self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    # -- runs -------------------------------------------------------------------------------
    def has(self, run_id: str, statuses=("done", "diverged")) -> bool:
        """Whether the run finished (a 'failed' run is retried by default)."""
        con = self.connect()
        try:
            q = f"SELECT 1 FROM runs WHERE id = ? AND status IN ({','.join('?' * len(statuses))})"
            return con.execute(q, (run_id, *statuses)).fetchone() is not None
        finally:
            con.close()

    def record(self, run: dict[str, Any], epochs: list[dict[str, Any]]) -> None:
        """Insert or replace a run with its epochs, atomically."""
        row = dict(run)
        for c in JSON_COLUMNS:
            row[c] = json.dumps(row.get(c) or {}, sort_keys=True)
        cols = ",".join(row)
        with self.transaction() as con:
            con.execute("DELETE FROM epochs WHERE run_id = ?", (row["id"],))
            con.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({','.join('?' * len(row))})", tuple(row.values()))
            con.executemany(
                "INSERT INTO epochs (run_id, epoch, train_loss, train_acc, val_acc, test_acc, epoch_time, extra)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [
                    (row["id"], e["epoch"], e.get("train_loss"), e.get("train_acc"), e.get("val_acc"),
                     e.get("test_acc"), e.get("epoch_time"), json.dumps(e.get("extra") or {}))
                    for e in epochs
                ],
            )

    @staticmethod
    def _decode(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        for c in JSON_COLUMNS:
            if c in d and isinstance(d[c], str):
                d[c] = json.loads(d[c])
        return d

    def runs(self, **where: Any) -> list[dict[str, Any]]:
        allowed = {"id", "rule", "model", "data", "seed", "status"}
        bad = set(where) - allowed
        if bad:
            raise StoreError(f"cannot filter runs by {', '.join(sorted(bad))}; use {', '.join(sorted(allowed))}")
        clause = " AND ".join(f"{k} = ?" for k in where)
        q = "SELECT * FROM runs" + (f" WHERE {clause}" if clause else "") + " ORDER BY rule, model, data, seed, finished"
        con = self.connect()
        try:
            return [self._decode(r) for r in con.execute(q, tuple(where.values()))]
        finally:
            con.close()

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        con = self.connect()
        try:
            rows = con.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)).fetchall()
        finally:
            con.close()
        out = []
        for r in rows:
            d = dict(r)
            d["extra"] = json.loads(d["extra"] or "{}")
            out.append(d)
        return out

    def select(self, selection: str = "all") -> list[dict[str, Any]]:
        """Runs chosen by a small expression: 'all', comma-separated run ids, or filters
        like 'rule=fa,data=mnist' (several values with '|': 'rule=fa|dfa')."""
        selection = (selection or "all").strip()
        runs = self.runs()
        if selection == "all":
            return runs
        parts = [p.strip() for p in selection.split(",") if p.strip()]
        if all("=" not in p for p in parts):
            ids = set(parts)
            chosen = [r for r in runs if r["id"] in ids]
            missing = ids - {r["id"] for r in chosen}
            if missing:
                raise StoreError(f"no run with id {', '.join(sorted(missing))} in {self.path}")
            return chosen
        filters: dict[str, set[str]] = {}
        for p in parts:
            if "=" not in p:
                raise StoreError(f"cannot mix run ids and filters in --runs: {selection!r}")
            k, v = (s.strip() for s in p.split("=", 1))
            if k not in {"id", "rule", "model", "data", "seed", "status"}:
                raise StoreError(f"unknown run field {k!r} in --runs {selection!r}")
            filters[k] = set(v.split("|"))
        return [r for r in runs if all(str(r[k]) in vs for k, vs in filters.items())]
