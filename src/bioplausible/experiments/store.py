"""The results store: one SQLite file, one row per run, per-epoch metrics beside it.

Knows nothing of torch. Each run is written in one transaction when it ends (done,
diverged or failed), so a run killed half-way leaves no row and is simply run again: a
sweep that is interrupted and restarted ends with exactly one row per grid cell. A failed
rerun never replaces a finished row (`record`), so `--force` loses nothing when it fails.

`Store(path, readonly=True)` is for commands that only read: it opens the file read-only
(no schema, no WAL switch, nothing written) and refuses a file that is not a bioplausible
store. Every SQLite error becomes a StoreError naming the file.
"""

from __future__ import annotations

import json
import os
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
    checkpoint TEXT,              -- path relative to the store's folder (older rows: as written)
    checkpoint_sha256 TEXT,       -- digest of the checkpoint file: a checkpoint must belong to its run
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


# columns a file must have to be taken for a bioplausible store (older stores lack `code`)
_REQUIRED_COLUMNS = {"id", "rule", "model", "data", "seed", "config", "status", "metrics"}
# added since the first stores; a writable open adds what a store lacks
_LATER_COLUMNS = {"code": "TEXT", "checkpoint_sha256": "TEXT", "network": "TEXT"}


class Store:
    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if self.path.is_dir():
            raise StoreError(f"results store {self.path} is a folder; --store takes an SQLite file")
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no results store at {self.path} (run something first, or pass --store)")
            self._check_schema()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder of results store {self.path}: {e.strerror or e}") from None
        self._check_schema(allow_empty=True)
        self._check_writable()
        try:
            con = self.connect()
            try:
                con.executescript(SCHEMA)  # idempotent; executescript manages its own commit
                have = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
                for col, typ in _LATER_COLUMNS.items():
                    if col not in have:
                        # e.g. a store written before runs recorded their code: its runs count as stale
                        try:
                            con.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
                        except sqlite3.OperationalError as e:
                            if "duplicate column" not in str(e):  # another process added it first
                                raise
            finally:
                con.close()
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> StoreError:
        msg = str(e)
        if "readonly" in msg or "read-only" in msg:
            return StoreError(f"results store {self.path} is read-only ({msg}); pass a writable --store")
        if "not a database" in msg or "malformed" in msg:
            return StoreError(f"{self.path} is not a bioplausible results store ({msg})")
        return StoreError(f"results store {self.path}: {msg}")

    def _check_schema(self, allow_empty: bool = False) -> None:
        """Refuse a file that is not a bioplausible store (another SQLite file, random bytes,
        a truncated store) before anything is written to it."""
        if not self.path.exists():
            return
        if self.path.stat().st_size == 0 and allow_empty:
            return
        # SQLite makes -wal/-shm files to read a file whose header says WAL; a file we
        # refuse is left as it was found
        side = [Path(f"{self.path}{s}") for s in ("-wal", "-shm")]
        had = [p.exists() for p in side]
        try:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                cols = {r[1] for r in con.execute("PRAGMA table_info(runs)")} if "runs" in tables else set()
                if "runs" in tables:
                    con.execute("SELECT count(*) FROM runs").fetchone()  # a truncated file fails here
            finally:
                con.close()
        except sqlite3.Error as e:
            for p, h in zip(side, had):
                if not h:
                    p.unlink(missing_ok=True)
            raise self._error(e) from None
        if not tables and allow_empty:
            return
        if not _REQUIRED_COLUMNS <= cols:
            raise StoreError(f"{self.path} is an SQLite file but not a bioplausible results store "
                             f"(tables: {', '.join(sorted(tables)) or 'none'})")

    def _check_writable(self) -> None:
        """Before training, not after: a run whose row cannot be written is time lost."""
        folder = self.path.parent
        for p in ([self.path] if self.path.exists() else []) + [folder]:
            if not os.access(p, os.W_OK):
                raise StoreError(f"results store {self.path}: {p} is not writable; pass a writable --store")
        ckpt = folder / "checkpoints"
        if ckpt.exists() and not (ckpt.is_dir() and os.access(ckpt, os.W_OK)):
            raise StoreError(f"results store {self.path}: its checkpoint folder {ckpt} is not a writable folder")

    def connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                # mode=ro: nothing is created, no column added, the journal mode left as it is
                con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                                      isolation_level=None)
            else:
                con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys = ON")
            if not self.readonly:
                con.execute("PRAGMA journal_mode = WAL")  # readers (reports) never block a writer
        except sqlite3.Error as e:
            raise self._error(e) from None
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error)."""
        if self.readonly:
            raise StoreError(f"results store {self.path} was opened read-only")
        con = self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if isinstance(e, sqlite3.IntegrityError):  # a bug in the row, not a problem of the file
                raise
            raise self._error(e) from None
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _script(self, sql: str) -> None:
        con = self.connect()
        try:
            con.executescript(sql)
        except sqlite3.Error as e:
            raise self._error(e) from None
        finally:
            con.close()

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        con = self.connect()
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error(e) from None
        finally:
            con.close()

    # -- runs -------------------------------------------------------------------------------
    def has(self, run_id: str, statuses=("done", "diverged"), code: str | None = None) -> bool:
        """Whether the run finished (a 'failed' run is retried by default) and, given `code`
        (its code fingerprint now), was made by that code: a run recorded by other code is
        stale, to be run again (its row is then replaced)."""
        q = f"SELECT 1 FROM runs WHERE id = ? AND status IN ({','.join('?' * len(statuses))})"
        args: tuple = (run_id, *statuses)
        if code is not None:
            q += " AND code = ?"
            args += (code,)
        return bool(self._read(q, args))

    def record(self, run: dict[str, Any], epochs: list[dict[str, Any]]) -> bool:
        """Insert or replace a run with its epochs, atomically. A failed run does not replace
        a finished one (a `--force` rerun that fails keeps the old result and its
        checkpoint); returns whether the row was written."""
        row = dict(run)
        for c in JSON_COLUMNS:
            row[c] = None if c == "network" and not row.get(c) else json.dumps(row.get(c) or {}, sort_keys=True)
        if row.get("checkpoint"):
            # relative to the store's folder: the store and its checkpoints move together, and
            # a command run from another directory finds them (never another project's file)
            try:
                row["checkpoint"] = Path(row["checkpoint"]).resolve().relative_to(
                    self.path.parent.resolve()).as_posix()
            except ValueError:
                pass
        cols = ",".join(row)
        with self.transaction() as con:
            if row.get("status") == "failed":
                old = con.execute("SELECT status FROM runs WHERE id = ?", (row["id"],)).fetchone()
                if old is not None and old["status"] in ("done", "diverged"):
                    return False
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
        return True

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
        return [self._decode(r) for r in self._read(q, tuple(where.values()))]

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
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
        self._script(self.CRITERIA_SCHEMA)
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
        lasts = self._read("SELECT version, created FROM criteria ORDER BY created DESC LIMIT 1")
        if not lasts:
            return [], {}
        last = lasts[0]
        rows = self._read("SELECT row FROM criteria WHERE version = ? ORDER BY position", (last["version"],))
        return [json.loads(r["row"]) for r in rows], {"version": last["version"], "created": last["created"]}

    def tables(self) -> list[str]:
        """Names of the tables in the store (the report looks for the brain comparison's)."""
        return [r[0] for r in self._read("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]

    def query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        """Read-only SELECT for readers of tables other modules add (brain results)."""
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise StoreError("Store.query runs SELECT statements only")
        return [dict(r) for r in self._read(sql, params)]

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
        self._script(self.RDMS_SCHEMA)
        with self.transaction() as con:
            con.execute("DELETE FROM brain_rdms")
            con.executemany("INSERT INTO brain_rdms (position, label, kind, n, vector, created) VALUES (?,?,?,?,?,?)",
                            [(i, p["label"], p["kind"], int(p["n"]), json.dumps(p["vector"]), created)
                             for i, p in enumerate(panels)])

    def rdms(self) -> list[dict[str, Any]]:
        if "brain_rdms" not in self.tables():
            return []
        rows = [dict(r) for r in self._read("SELECT * FROM brain_rdms ORDER BY position")]
        for r in rows:
            r["vector"] = json.loads(r["vector"])
        return rows
