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
    code TEXT,                    -- experiments.fingerprint: hash of the code the run executed
    device TEXT,
    started TEXT, finished TEXT,
    wall_time REAL,               -- seconds, whole run including evaluation
    train_time REAL,              -- seconds spent in train_step only
    samples_per_s REAL,           -- training samples / train_time
    epoch_time REAL,              -- mean seconds per epoch (training only)
    checkpoint TEXT,
    network TEXT                  -- JSON: the network that ran (runner.network_of)
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, val_acc REAL, test_acc REAL,
    epoch_time REAL, extra TEXT,
    PRIMARY KEY (run_id, epoch)
);
"""

JSON_COLUMNS = ("config", "metrics", "versions", "network")


class StoreError(ValueError):
    pass


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self.connect()
        try:
            con.executescript(SCHEMA)  # idempotent; executescript manages its own commit
            cols = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
            if "code" not in cols:
                # a store written before runs recorded their code: its runs count as stale
                con.execute("ALTER TABLE runs ADD COLUMN code TEXT")
            if "network" not in cols:  # written before runs recorded their network
                con.execute("ALTER TABLE runs ADD COLUMN network TEXT")
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
    def has(self, run_id: str, statuses=("done", "diverged"), code: str | None = None) -> bool:
        """Whether the run finished (a 'failed' run is retried by default) and, given `code`
        (its code fingerprint now), was made by that code: a run recorded by other code is
        stale, to be run again (its row is then replaced)."""
        con = self.connect()
        try:
            q = f"SELECT 1 FROM runs WHERE id = ? AND status IN ({','.join('?' * len(statuses))})"
            args: tuple = (run_id, *statuses)
            if code is not None:
                q += " AND code = ?"
                args += (code,)
            return con.execute(q, args).fetchone() is not None
        finally:
            con.close()

    def record(self, run: dict[str, Any], epochs: list[dict[str, Any]]) -> None:
        """Insert or replace a run with its epochs, atomically."""
        row = dict(run)
        for c in JSON_COLUMNS:
            row[c] = None if c == "network" and not row.get(c) else json.dumps(row.get(c) or {}, sort_keys=True)
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

    # -- criteria matrix (added for `compare`/`report`) ----------------------------------------
    CRITERIA_SCHEMA = """
    CREATE TABLE IF NOT EXISTS criteria (
        version TEXT NOT NULL,        -- bioplausible version that measured the matrix
        created TEXT NOT NULL,        -- UTC time the matrix was stored
        position INTEGER NOT NULL,    -- row order as the matrix builder gave it
        rule TEXT,
        row TEXT NOT NULL,            -- JSON of one matrix row, as built
        PRIMARY KEY (version, position)
    );
    """

    def record_criteria(self, rows: list[dict[str, Any]], version: str, created: str) -> None:
        """Store one criteria matrix (replacing any matrix of the same version), atomically."""
        con = self.connect()
        try:
            con.executescript(self.CRITERIA_SCHEMA)
        finally:
            con.close()
        with self.transaction() as con:
            con.execute("DELETE FROM criteria WHERE version = ?", (version,))
            con.executemany(
                "INSERT INTO criteria (version, created, position, rule, row) VALUES (?, ?, ?, ?, ?)",
                [(version, created, i, r.get("rule"), json.dumps(r, sort_keys=False, default=str))
                 for i, r in enumerate(rows)],
            )

    def criteria(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The most recently stored criteria matrix: (rows, {version, created}); ([], {}) if none."""
        if "criteria" not in self.tables():
            return [], {}
        con = self.connect()
        try:
            last = con.execute("SELECT version, created FROM criteria ORDER BY created DESC LIMIT 1").fetchone()
            if last is None:
                return [], {}
            rows = con.execute("SELECT row FROM criteria WHERE version = ? ORDER BY position",
                               (last["version"],)).fetchall()
        finally:
            con.close()
        return [json.loads(r["row"]) for r in rows], {"version": last["version"], "created": last["created"]}

    def tables(self) -> list[str]:
        """Names of the tables in the store (the report looks for the brain comparison's)."""
        con = self.connect()
        try:
            return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        finally:
            con.close()

    def query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        """Read-only SELECT for readers of tables other modules add (brain results)."""
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise StoreError("Store.query runs SELECT statements only")
        con = self.connect()
        try:
            return [dict(r) for r in con.execute(sql, params)]
        finally:
            con.close()

    # -- RDMs shown by the report (added for `compare`/`report`) -------------------------------
    RDMS_SCHEMA = """
    CREATE TABLE IF NOT EXISTS brain_rdms (
        position INTEGER PRIMARY KEY, -- panel order
        label TEXT NOT NULL,          -- e.g. 'hIT (brain)', 'bp mlp digits: fc1'
        kind TEXT NOT NULL,           -- brain | trained | reference
        n INTEGER NOT NULL,           -- number of stimuli
        vector TEXT NOT NULL,         -- JSON: upper triangle (row-major, no diagonal)
        created TEXT NOT NULL
    );
    """

    def record_rdms(self, panels: list[dict[str, Any]], created: str) -> None:
        """Replace the stored RDM panels ({label, kind, n, vector}) in one transaction."""
        con = self.connect()
        try:
            con.executescript(self.RDMS_SCHEMA)
        finally:
            con.close()
        with self.transaction() as con:
            con.execute("DELETE FROM brain_rdms")
            con.executemany("INSERT INTO brain_rdms (position, label, kind, n, vector, created) VALUES (?,?,?,?,?,?)",
                            [(i, p["label"], p["kind"], int(p["n"]), json.dumps(p["vector"]), created)
                             for i, p in enumerate(panels)])

    def rdms(self) -> list[dict[str, Any]]:
        if "brain_rdms" not in self.tables():
            return []
        con = self.connect()
        try:
            rows = [dict(r) for r in con.execute("SELECT * FROM brain_rdms ORDER BY position")]
        finally:
            con.close()
        for r in rows:
            r["vector"] = json.loads(r["vector"])
        return rows
