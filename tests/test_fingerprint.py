"""Code fingerprints: a recorded run counts as done only for the code that made it."""

import ast
import sqlite3
import textwrap

import pytest

from bioplausible.algorithms import resolve
from bioplausible.config import RunConfig
from bioplausible.experiments import fingerprint
from bioplausible.experiments.fingerprint import code_fingerprint
from bioplausible.experiments.runner import run
from bioplausible.experiments.store import SCHEMA, Store


def _cfg(**kw):
    return resolve(RunConfig(**{**dict(rule="bp", model="mlp", data="digits", epochs=1, widths=(16,), seed=0), **kw}))


def test_fingerprint_follows_the_rule_and_what_training_runs():
    conv = fingerprint.modules("bioplausible.algorithms.stdp_conv")
    # the conv implementation builds on the dense one; the loop, layers and loaders count
    for m in ("bioplausible.algorithms.stdp", "bioplausible.models.spiking", "bioplausible.models.layers",
              "bioplausible.experiments.runner", "bioplausible.data.idx", "bioplausible.algorithms.base"):
        assert m in conv
    bp = fingerprint.modules("bioplausible.algorithms.bp")
    # another rule's module, the registry, the store, reports and criteria do not
    for m in ("bioplausible.algorithms.stdp", "bioplausible.algorithms", "bioplausible.experiments.store",
              "bioplausible.criteria.claims", "bioplausible.data.fetch"):
        assert m not in bp
    assert code_fingerprint("stdp") == code_fingerprint("rstdp")  # the same two modules (mlp and cnn entries)
    assert code_fingerprint("stdp") != code_fingerprint("bp")
    with pytest.raises(ValueError, match="nonsense"):
        code_fingerprint("nonsense")


def test_fingerprint_ignores_docstrings_and_comments_not_code():
    # what counts of a module is its syntax tree without docstrings
    def digest(text):
        return ast.dump(fingerprint._strip_docstrings(ast.parse(textwrap.dedent(text))))

    a = digest('''
        """Doc."""
        def f(x):
            """Doc."""
            return x + 1
        ''')
    b = digest('''
        """Another doc."""
        def f(x):  # why, not what
            """Changed."""

            return x + 1
        ''')
    c = digest('''
        def f(x):
            return x + 2
        ''')
    assert a == b and a != c


def test_run_by_other_code_is_stale_and_run_again(tmp_path, digits, monkeypatch):
    store = Store(tmp_path / "s.sqlite")
    cfg = _cfg()
    first = run(cfg, store, data=digits)
    assert first["code"] == code_fingerprint("bp")
    assert store.runs(id=cfg.key())[0]["code"] == code_fingerprint("bp")
    assert run(cfg, store, data=digits) is None  # same code: done
    # the code changes: the recorded run no longer counts, and its row is replaced
    monkeypatch.setattr("bioplausible.experiments.runner.code_fingerprint", lambda rule: "0" * 16)
    assert not store.has(cfg.key(), code="0" * 16)
    again = run(cfg, store, data=digits)
    assert again is not None
    got = store.runs(id=cfg.key())
    assert len(got) == 1 and got[0]["code"] == "0" * 16


def test_store_from_before_fingerprints_gains_the_column(tmp_path, digits):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    old_schema = "\n".join(line for line in SCHEMA.splitlines() if not line.lstrip().startswith("code TEXT"))
    con.executescript(old_schema)
    con.execute("INSERT INTO runs (id, rule, model, data, seed, config, status, metrics, versions) "
                "VALUES (?, 'bp', 'mlp', 'digits', 0, '{}', 'done', '{}', '{}')", (_cfg().key(),))
    con.commit()
    con.close()
    assert "code" not in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(runs)")}
    store = Store(path)
    assert store.has(_cfg().key())  # the run is kept ...
    assert not store.has(_cfg().key(), code=code_fingerprint("bp"))  # ... but counts as stale
    assert run(_cfg(), store, data=digits)["status"] == "done"
    assert store.has(_cfg().key(), code=code_fingerprint("bp"))
