"""Brain inference: the dual bootstrap and t tests agree with rsatoolbox, a planted network is
named against an unrelated one, equal networks are not distinguishable, flat RDMs are never
ranked, stimuli reach a network in its training set's input range, and `compare` without
the brain data still writes a complete report that says why."""

from __future__ import annotations

import itertools
import re

import numpy as np

from bioplausible.brain import inference as infer
from bioplausible.brain import recordings as R
from bioplausible.brain import rsa
from bioplausible.brain.compare import BrainComparison, Source
from bioplausible.brain.stimuli import to_network_input

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def test_dual_bootstrap_and_t_tests_match_rsatoolbox(monkeypatch):
    import rsatoolbox.inference.evaluate as ev
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.rdm import RDMs

    rng = np.random.default_rng(3)
    n, s = 12, 4
    base = rng.normal(size=(n, 6))
    subjects = rsa.to_vectors(np.stack([rsa.activation_rdm(base + rng.normal(size=base.shape))[0] for _ in range(s)]))
    models = rsa.to_vectors(np.stack([rsa.activation_rdm(base + k * rng.normal(size=base.shape))[0]
                                      for k in (0.5, 1.0, 3.0)]))
    drawn = []
    real = ev.bootstrap_sample

    def recording(*a, **k):
        out = real(*a, **k)
        drawn.append((np.asarray(out[1]), np.asarray(out[2])))
        return out

    monkeypatch.setattr(ev, "bootstrap_sample", recording)
    np.random.seed(0)
    res = ev.eval_dual_bootstrap([ModelFixed(f"m{i}", RDMs(m[None])) for i, m in enumerate(models)],
                                 RDMs(subjects), method="spearman", k_pattern=1, k_rdm=1, N=20)
    subj_idx = np.stack([d[0] for d in drawn]).astype(int)
    stim_idx = np.stack([d[1] for d in drawn]).astype(int)
    mine = infer.dual_evaluations(models, subjects, stim_idx, subj_idx, "spearman")  # (B, K, 3)
    theirs = res.evaluations[:, :, 0, 0, :]
    np.testing.assert_allclose(mine, theirs, atol=1e-10)

    # the t tests: rsatoolbox's variances from the three schemes, its p values
    ceil = infer.ceiling_evaluations(subjects, stim_idx, subj_idx, "spearman")
    mv, dv, _ = infer.variances(mine, ceil, s, n)
    np.testing.assert_allclose(mv, res.model_var, rtol=1e-8)
    np.testing.assert_allclose(dv, res.diff_var, rtol=1e-8)
    point = np.nanmean(res.evaluations, axis=0).mean(axis=(1, 2, 3))  # rsatoolbox tests this point
    df = infer.dof(s, n)
    np.testing.assert_allclose(infer.t_test(point, mv, df, one_sided=True), res.test_zero(), atol=1e-10)
    pairs = list(itertools.combinations(range(len(models)), 2))
    diffs = np.array([point[a] - point[b] for a, b in pairs])
    theirs_pair = res.test_pairwise()
    np.testing.assert_allclose(infer.t_test(diffs, dv, df), [theirs_pair[a, b] for a, b in pairs], atol=1e-10)


def _recordings(layer: np.ndarray, subjects: int, noise: float, rng) -> R.Recordings:
    n = len(layer)
    subj = np.stack([rsa.activation_rdm(layer + noise * rng.normal(size=layer.shape))[0] for _ in range(subjects)])
    cats = [str(c) for c in np.repeat(np.arange(4), n // 4)]
    return R.Recordings("planted", [f"s{i}" for i in range(n)], None, cats,
                        {"area": R.Target("area", subj, [f"sub{i}" for i in range(subjects)])})


def _source(key, kind, group, patterns, rule):
    return Source(key, kind, group, ["layer"], rsa.to_vectors(rsa.activation_rdm(patterns)[0]),
                  {"run_id": key, "rule": rule, "model": "mlp", "data": "synthetic", "seed": 0})


def test_planted_network_is_named_against_an_unrelated_one_and_flat_rdms_are_never_ranked():
    rng = np.random.default_rng(0)
    n, ch = 40, 30
    cat = np.repeat(np.arange(4), n // 4)
    planted = rng.normal(size=(4, ch))[cat] + rng.normal(size=(n, ch))
    rec = _recordings(planted, subjects=5, noise=1.0, rng=rng)
    bc = BrainComparison(rec, n_boot=200, seed=1)
    for sd in range(3):  # seeds: the planted net with small seed noise, an unrelated net
        bc.add(_source(f"run:good{sd}", "trained", "good mlp", planted + 0.1 * rng.normal(size=planted.shape), "good"))
        bc.add(_source(f"run:other{sd}", "trained", "other mlp", rng.normal(size=(n, ch)), "other"))
    flat = Source("run:flat", "trained", "flat mlp", ["layer"], np.zeros((1, n * (n - 1) // 2)),
                  {"run_id": "flat", "rule": "flat", "model": "mlp", "data": "synthetic", "seed": 0})
    bc.add(flat)
    res = bc.run()
    test = res.test("area", "good mlp", "other mlp")
    assert test["diff"] > 0 and test["p_fdr"] < 0.05
    line = infer.verdict_lines(res)[0]
    assert "most brain-like: good mlp" in line and "good mlp > other mlp" in line
    assert "uninformative (flat RDM), not ranked: flat mlp" in line
    assert "flat mlp >" not in line and "> flat mlp" not in line
    assert not res.single_seed and next(s for s in res.summary if s["group"] == "good mlp")["seed_var"] > 0


def test_equal_networks_are_not_distinguishable():
    rng = np.random.default_rng(1)
    n, ch = 40, 30
    layer = rng.normal(size=(n, ch))
    rec = _recordings(layer, subjects=4, noise=1.0, rng=rng)
    bc = BrainComparison(rec, n_boot=200, seed=2)
    for name in ("a", "b", "c"):
        bc.add(_source(f"run:{name}", "trained", f"{name} mlp", layer, name))
    res = bc.run()
    line = infer.verdict_lines(res)[0]
    assert "not distinguishable from each other: all 3 trained networks (a mlp, b mlp, c mlp)" in line
    assert "most brain-like" not in line and ">" not in line
    assert "one seed per rule: seed variance not included" in line


def _images():
    img = np.full((4, 28, 28, 3), 128, np.uint8)  # mid-grey ground, as the 92 images
    img[0, 8:20, 8:20] = 0  # dark object
    img[1, 8:20, 8:20] = 255  # bright object
    img[2, 4:12, 4:24] = (200, 30, 30)  # red object
    img[3, 10:18, 10:18] = (30, 30, 200)  # blue object
    return img


def test_stimuli_reach_mnist_nets_on_mnist_background_with_bright_objects():
    x = to_network_input(_images(), (1, 28, 28), [MNIST_MEAN], [MNIST_STD], mapping="auto", data="mnist")
    ground = -MNIST_MEAN / MNIST_STD
    assert abs(float(x[:, 0, 0, 0].max()) - ground) < 0.05 and abs(float(x[:, 0, -1, -1].min()) - ground) < 0.05
    # dark and bright objects both become bright on the dark ground (MNIST polarity)
    assert x[0, 0, 14, 14] > ground + 1 and x[1, 0, 14, 14] > ground + 1
    raw = to_network_input(_images(), (1, 28, 28), [MNIST_MEAN], [MNIST_STD], mapping="raw")
    assert raw[0, 0, 0, 0] > 1.0  # as the images are: the grey ground far above MNIST's


def test_colour_training_sets_keep_colour():
    x = to_network_input(_images(), (3, 16, 16), [0.49, 0.48, 0.45], [0.25, 0.24, 0.26], mapping="auto",
                         data="cifar10")
    red, blue = x[2, :, 4, 8], x[3, :, 8, 8]
    assert red[0] > red[2] + 1 and blue[2] > blue[0] + 1


def test_compare_without_brain_data_says_why_and_writes_the_rest(tmp_path, monkeypatch):
    from bioplausible.data import fetch as fetch_mod
    from bioplausible import pipeline as ecli
    from bioplausible.experiments.store import Store
    from bioplausible.report import build

    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path / "empty"))

    def refuse(name, *a, **k):
        raise fetch_mod.DataError("registry unreachable (test)")

    monkeypatch.setattr(fetch_mod, "fetch", refuse)
    st = Store(tmp_path / "store.sqlite")
    row = {"id": "r1", "rule": "bp", "model": "mlp", "data": "digits", "seed": 0,
           "config": {"rule": "bp", "model": "mlp", "data": "digits", "seed": 0, "epochs": 1},
           "status": "done", "reason": None, "metrics": {"test_acc": 0.9}, "versions": {}, "git_commit": None,
           "device": "cpu", "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:00:01+00:00",
           "wall_time": 1.0, "train_time": 1.0, "samples_per_s": 1.0, "epoch_time": 1.0, "checkpoint": None}
    st.record(row, [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.9, "val_acc": 0.9, "test_acc": 0.9,
                     "epoch_time": 1.0, "extra": {}}])
    ecli._brain_step(st, ["r1"], 10)
    build(st, tmp_path / "report", run_ids=["r1"])
    md = (tmp_path / "report" / "index.html").read_text()
    assert "could not be fetched" in md and "registry unreachable (test)" in md
    assert "Runs" in md and "90.00" in md  # the rest of the report is there


def test_brain_markdown_escapes_names():
    from bioplausible.report.tables import markdown, md_text

    out = markdown(["group"], [[md_text("<img src=x onerror=alert(1)>")]])
    assert "\\<img" in out and not re.search(r"(?<!\\)[<>]", out)


def test_partial_spearman_equals_correlation_of_rank_residuals():
    from scipy.stats import rankdata

    rng = np.random.default_rng(5)
    ctrl = rng.normal(size=45)
    model = ctrl + rng.normal(size=45)
    data = np.stack([ctrl + rng.normal(size=45), model + rng.normal(size=45)])
    got = infer.partial_spearman(model, data, ctrl)

    def resid(v):
        r, c = rankdata(v), rankdata(ctrl)
        x = np.column_stack([np.ones_like(c), c])
        return r - x @ np.linalg.lstsq(x, r, rcond=None)[0]

    want = [np.corrcoef(resid(model), resid(d))[0, 1] for d in data]
    np.testing.assert_allclose(got[0], want, atol=1e-12)
    assert infer.partial_spearman(ctrl, data, ctrl).tolist() == [[0.0, 0.0]]  # nothing left beyond the control


def test_compare_fetches_missing_brain_data_with_one_line(tmp_path, monkeypatch):
    from bioplausible.brain.store import ensure_brain_data, read_status
    from bioplausible.data import fetch as fetch_mod
    from bioplausible.experiments.store import Store

    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path / "cache"))
    calls = []

    def fake_fetch(name, *a, **k):
        calls.append(name)
        (tmp_path / "cache" / name).mkdir(parents=True)
        return tmp_path / "cache" / name

    monkeypatch.setattr(fetch_mod, "fetch", fake_fetch)
    said = []
    st = Store(tmp_path / "s.sqlite")
    assert ensure_brain_data(st, said.append) and calls == ["kriegeskorte92"]
    assert len(said) == 1 and "fetching kriegeskorte92" in said[0] and read_status(st) == []
    assert ensure_brain_data(st, said.append) and calls == ["kriegeskorte92"] and len(said) == 1  # present: silent


def test_runs_of_a_store_with_seeds_baselines_and_report(tmp_path, digits):
    from bioplausible.brain.compare import compare_runs
    from bioplausible.brain.store import write_result
    from bioplausible.config import RunConfig
    from bioplausible.experiments.runner import run
    from bioplausible.experiments.store import Store
    from bioplausible.report.tables import read_brain

    st = Store(tmp_path / "s.sqlite")
    for rule in ("bp", "fa"):
        for seed in (0, 1):
            run(RunConfig(rule=rule, model="mlp", data="digits", epochs=1, widths=(16,), seed=seed), st, data=digits)
    rng = np.random.default_rng(0)
    n = 24
    images = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    subj = np.stack([rsa.activation_rdm(rng.normal(size=(n, 10)))[0] for _ in range(3)])
    rec = R.Recordings("tiny", [f"s{i}" for i in range(n)], images, [str(i % 4) for i in range(n)],
                       {"area": R.Target("area", subj, ["a", "b", "c"])})
    res = compare_runs(st, "all", rec, n_boot=40, untrained_seeds=3, references=False)
    summ = {s["group"]: s for s in res.summary}
    assert set(summ) == {"bp mlp", "fa mlp", "untrained bp mlp", "untrained fa mlp", "pixels digits"}
    assert summ["bp mlp"]["n_members"] == 2 and summ["untrained fa mlp"]["n_members"] == 3
    assert res.baseline_of == {"bp mlp": "untrained bp mlp", "fa mlp": "untrained fa mlp"}
    assert np.isfinite(summ["bp mlp"]["partial"]) and np.isfinite(summ["bp mlp"]["p_untrained"])
    assert not res.single_seed and len(infer.verdict_lines(res)) == 1
    write_result(st, res, selection="all")
    brain = read_brain(st)
    assert "4 trained runs" in brain["notes"][0] and brain["verdicts"] == infer.verdict_lines(res)
