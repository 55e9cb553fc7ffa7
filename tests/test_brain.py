"""Brain comparison: RDMs, the known hIT-mIT value, ceiling vs shuffled, the fast bootstrap,
and loaders that refuse malformed files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.io
import torch

from bioplausible.brain import recordings as R
from bioplausible.brain import rsa
from bioplausible.brain.compare import score_learner
from bioplausible.data.base import DataError, DatasetMissing
from bioplausible.paths import data_home


def test_rdm_of_a_tiny_example_matches_hand_computation():
    x = np.array([[1.0, 2, 3], [3, 2, 1], [1, 2, 4]])
    # Pearson r: (0,1) = -1; (0,2) = 9/sqrt(84) (deviations [-1,0,1] and [-4,-1,5]/3); (1,2) = -9/sqrt(84)
    r02 = 9 / np.sqrt(84)
    corr, _ = rsa.activation_rdm(x, "correlation")
    np.testing.assert_allclose(corr, [[0, 2, 1 - r02], [2, 0, 1 + r02], [1 - r02, 1 + r02, 0]], atol=1e-12)
    # rsatoolbox's euclidean: squared distance / number of channels
    eu, _ = rsa.activation_rdm(x, "euclidean")
    np.testing.assert_allclose(eu, np.array([[0, 8, 1], [8, 0, 13], [1, 13, 0]]) / 3, atol=1e-12)
    # cosine distance 1 - cos: cos(0,1) = 10/14
    cos, _ = rsa.activation_rdm(x, "cosine")
    assert cos[0, 1] == pytest.approx(1 - 10 / 14)
    # a layer that is silent for one stimulus: correlation taken as 0 (distance 1), with a note
    z, notes = rsa.activation_rdm(np.vstack([x, np.zeros(3)]), "correlation")
    assert z[3, :3].tolist() == [1, 1, 1] and notes
    # upper-triangle order and Spearman on 4 stimuli: ranks 1..6 vs pairwise swapped, rho = 1 - 6*6/(6*35)
    v = rsa.to_vectors(corr)[0]
    assert v.tolist() == [corr[0, 1], corr[0, 2], corr[1, 2]]
    a, b = np.array([1.0, 2, 3, 4, 5, 6]), np.array([2.0, 1, 4, 3, 6, 5])
    assert rsa.compare(a, b, "spearman")[0, 0] == pytest.approx(1 - 36 / 210)
    # a flat RDM among others scores 0 and leaves the others' scores in place
    sims = rsa.compare(np.stack([a, np.ones(6), b]), np.stack([b, a]), "spearman")
    np.testing.assert_allclose(sims, [[1 - 36 / 210, 1], [0, 0], [1, 1 - 36 / 210]])


K92 = data_home() / "kriegeskorte92"


@pytest.mark.skipif(not (K92 / R.K92_FILES["supp"]).is_file(), reason="run `bioplausible data fetch kriegeskorte92`")
def test_kriegeskorte_hit_vs_mit_reproduces_known_value():
    rec = R.load_kriegeskorte92()
    assert rec.images.shape == (92, 175, 175, 3) and rec.images.dtype == np.uint8
    assert rec.targets["hIT"].rdms.shape == (4, 92, 92) and len(rec.targets["behaviour"].subjects) == 16
    assert {"V1model", "HMAX_natImPatch"} <= set(rec.references) and "monkeyIT" not in rec.references
    hit = rsa.to_vectors(rec.targets["hIT_316vx"].rdms)
    mit = rsa.to_vectors(rec.targets["mIT_674"].rdms)
    assert round(float(rsa.compare(hit, mit, "spearman")[0, 0]), 3) == 0.439


class _Identity:
    """A 'network' whose one layer is its input: shown images that encode a pattern, its
    activations are (an affine copy of) that pattern."""

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"copy": x.flatten(1)}


def _synthetic(n=40, channels=64, subjects=5, noise=1.5, seed=0):
    rng = np.random.default_rng(seed)
    cat = np.repeat(np.arange(4), n // 4)
    pattern = rng.normal(size=(4, channels))[cat] + rng.normal(size=(n, channels))  # category structure
    subj = np.stack([rsa.activation_rdm(pattern + noise * rng.normal(size=pattern.shape))[0] for _ in range(subjects)])
    lo, hi = pattern.min(), pattern.max()
    images = np.round((pattern - lo) / (hi - lo) * 255).astype(np.uint8).reshape(n, 8, 8)
    rec = R.Recordings("synthetic", [f"s{i}" for i in range(n)], images, [str(c) for c in cat],
                       {"area": R.Target("area", subj, [f"sub{i}" for i in range(subjects)])})
    meta = {"id": "copy", "rule": "copy", "input_shape": (1, 8, 8), "mean": [0.5], "std": [0.25]}
    return rec, meta


def test_copy_of_generating_pattern_scores_near_ceiling_and_shuffled_near_zero():
    rec, meta = _synthetic()
    rows = score_learner(_Identity(), meta, rec, n_boot=200, seed=0, references=False)
    (row,) = rows
    assert row["noise_lower"] > 0.2  # the subjects agree: there is a ceiling to reach
    assert row["noise_lower"] - 0.03 <= row["score"] <= row["noise_upper"] + 0.01
    assert row["cv_fraction"] > 0.9 and row["ci_low"] < row["score"] < row["ci_high"]
    shuffled = dataclasses.replace(rec, images=rec.images[np.random.default_rng(1).permutation(rec.n_stimuli)])
    (srow,) = score_learner(_Identity(), meta, shuffled, n_boot=200, seed=0, references=False)
    assert abs(srow["score"]) < 0.1 and srow["ci_low"] < 0 < srow["ci_high"]


@pytest.mark.parametrize("method", ["spearman", "corr", "cosine_cov"])
def test_vectorised_bootstrap_equals_rsatoolbox_on_each_resample(method):
    from rsatoolbox.rdm import RDMs, compare

    rng = np.random.default_rng(3)
    n = 20
    p = n * (n - 1) // 2
    models = rng.random((4, p))
    models[0] = np.round(models[0] * 3)  # a model predicting many tied dissimilarities
    data = rng.random((3, p))
    samples = rsa.bootstrap_samples(n, 6, seed=0)
    half, _ = rsa.split_halves(n, seed=0)
    desc = {"index": np.arange(n)}
    for subset in (None, half):
        fast = rsa.bootstrap_compare(models, data, samples, method, subset=subset)
        for b, s in enumerate(samples):
            sel = s if subset is None else s[np.isin(s, subset)]
            ref = compare(RDMs(models, pattern_descriptors=desc).subsample_pattern("index", sel),
                          RDMs(data, pattern_descriptors=desc).subsample_pattern("index", sel), method)
            np.testing.assert_allclose(fast[b], ref, rtol=1e-6, atol=1e-9)


def test_loaders_read_good_files_and_reject_malformed_ones(tmp_path):
    ids = ["a", "b", "c", "d"]
    good = rsa.activation_rdm(np.random.default_rng(0).normal(size=(4, 5)))[0]
    # good files in each format (csv columns in another order) give the same RDM
    np.save(tmp_path / "square.npy", good)
    np.save(tmp_path / "condensed.npy", rsa.to_vectors(good)[0])
    scipy.io.savemat(tmp_path / "rdm.mat", {"rdm": good})
    order = [2, 0, 3, 1]
    with open(tmp_path / "rdm.csv", "w") as f:
        f.write("," + ",".join(ids[i] for i in order) + "\n")
        for i in order:
            f.write(ids[i] + "," + ",".join(repr(float(good[i, j])) for j in order) + "\n")
    for name in ("square.npy", "condensed.npy", "rdm.mat", "rdm.csv"):
        np.testing.assert_allclose(R.read_rdm_file(tmp_path / name, ids)[0], good, atol=1e-12)
    resp = np.random.default_rng(1).normal(size=(2, 4, 3))
    np.save(tmp_path / "resp.npy", resp)
    assert R.read_responses_file(tmp_path / "resp.npy", ids).shape == (2, 4, 3)

    def write(name, content):
        p = tmp_path / name
        if name.endswith(".npy"):
            np.save(p, content)
        elif name.endswith(".mat"):
            scipy.io.savemat(p, content)
        else:
            p.write_text(content)
        return p

    nan = good.copy()
    nan[0, 1] = nan[1, 0] = np.nan
    sim = 1 - good  # a similarity matrix: ones on the diagonal
    bad_rdms = [
        ("nonsquare.npy", good[:, :3], "square"),
        ("count.npy", np.zeros((5, 5)), "5 x 5 but there are 4 stimuli"),
        ("nan.csv", "\n".join(",".join(repr(float(v)) for v in row) for row in nan), "NaN"),
        ("missing.csv", "a,b,c,e\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in good), "missing stimulus 'd'"),
        ("similarity.mat", {"rdm": sim}, "similarity"),
        ("asym.npy", good + np.triu(np.ones((4, 4)), 1), "not symmetric"),
        ("words.csv", "a,b,c,d\n0,1,x,2\n1,0,1,1\n1,1,0,1\n2,1,1,0", "non-numeric"),
    ]
    for name, content, msg in bad_rdms:
        p = write(name, content)
        with pytest.raises(DataError, match=msg) as e:
            R.read_rdm_file(p, ids)
        assert name in str(e.value)
    bad_resp = [
        ("resp_nan.csv", "stimulus,v1,v2\na,1,2\nb,nan,1\nc,0,1\nd,1,1", "NaN"),
        ("resp_missing.csv", "stimulus,v1\na,1\nb,2\nc,3\nz,4", "missing stimulus 'd'"),
        ("resp_count.npy", np.zeros((5, 3)), "5 stimuli but there are 4"),
        ("resp_unbalanced.csv", "stimulus,v1\na,1\na,2\nb,2\nc,3\nd,4", "unequal numbers of repetitions"),
    ]
    for name, content, msg in bad_resp:
        p = write(name, content)
        with pytest.raises(DataError, match=msg) as e:
            R.read_responses_file(p, ids)
        assert name in str(e.value)
    # a folder whose images lack one stimulus; absent Kriegeskorte data says how to fetch it
    from PIL import Image

    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "rdms").mkdir()
    (tmp_path / "f" / "stimuli.txt").write_text("\n".join(ids))
    np.save(tmp_path / "f" / "rdms" / "v4.npy", good)
    for s in ids[:3]:
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "f" / "images" / f"{s}.png")
    with pytest.raises(DataError, match="missing stimulus image for 'd'"):
        R.load_folder(tmp_path / "f")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "f" / "images" / "d.png")
    assert R.load_folder(tmp_path / "f").targets["v4"].rdms.shape == (1, 4, 4)
    with pytest.raises(DatasetMissing, match="bioplausible data fetch kriegeskorte92"):
        R.load_kriegeskorte92(tmp_path / "absent")
