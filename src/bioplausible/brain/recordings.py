"""Brain recordings to compare networks with: the Kriegeskorte et al. 2008 92-image set and
a general reader for recordings the user brings.

Everything is read into one `Recordings` object:

- `stimulus_ids`, `images` (uint8 RGB, (N, H, W, 3) or a list of such arrays when sizes
  differ), `categories` (one label per stimulus or None);
- `targets`: the RDM sets a network is scored against. A `Target` holds one RDM per subject
  (or a single group RDM); with two or more subjects a noise ceiling can be estimated;
- `references`: classic model RDMs (V1 model, HMAX, ...) scored as baselines beside the
  networks;
- `rdms`: every named RDM read from the files (for example each hIT subject and session);
- `responses`: response matrices (stimuli x channels, optionally with repetitions) for the
  optional encoding model.

All RDMs are square (N, N) float64 arrays in the order of `stimulus_ids`, symmetric with a
zero diagonal; a file that is not gets a `DataError` naming the file.

## Kriegeskorte 92 (`load_kriegeskorte92`)
Files (from `bioplausible data fetch kriegeskorte92`) in `data_home()/kriegeskorte92`:

- `Kriegeskorte_Neuron2008_supplementalData.mat`: the 92 images (175x175 RGB), category
  per image and flags, the group RDMs of Figure 1: monkey IT (674 cells) and human IT
  (fMRI, 316 voxels). Spearman between the two: 0.439.
- `92_brainRDMs.mat`: human IT RDMs of 4 subjects x 2 sessions. The hIT target averages
  the two sessions of each subject, so that the leave-one-subject-out noise ceiling never
  has a subject's own other session among "the others". (The mean over all 8 session RDMs
  is rank-identical to the 316-voxel group RDM.)
- `92_behavRDMs.mat` (optional): 16 subjects' similarity-judgement RDMs.
- `92_modelRDMs.mat`, `rdm92_V1model.mat`, `rdm92_HMAXnatImPatch.mat` (optional): classic
  model RDMs. `monkeyIT` in `92_modelRDMs.mat` is the monkey recording itself and is not a
  model; its `V1` equals `rdm92_V1model`, read once. Its `HMAX` differs from
  `rdm92_HMAXnatImPatch` (an HMAX with natural-image patches), so both are kept.

Targets: `hIT` (4 subjects), `hIT_316vx` (group), `mIT_674` (one monkey RDM),
`behaviour` (16 subjects).

## A folder of your own (`load_folder`)
```
mydata/
  stimuli.txt               stimulus order, one id per line (required)
  images/<id>.<png|jpg|..>  one image per stimulus id (needed to show them to a network)
  categories.txt            optional: one category label per line, stimulus order
  rdms/<target>.npy|.mat|.csv       an RDM per target (see `read_rdm_file`)
  responses/<target>.npy|.mat|.csv  response matrices (see `read_responses_file`)
```
Each file under `rdms/` or `responses/` becomes a target named after the file's stem; RDMs
of response matrices are computed with `brain_distance` (correlation; crossnobis needs
repetitions). Use it for NSD, THINGS, BOLD5000 or any recording exported to these formats.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.base import DataError, DatasetMissing
from ..paths import data_home

__all__ = [
    "Target",
    "Responses",
    "Recordings",
    "load_recordings",
    "load_kriegeskorte92",
    "load_folder",
    "read_rdm_file",
    "read_responses_file",
    "read_stimulus_order",
    "read_images",
    "validate_rdm",
]

K92 = "kriegeskorte92"
K92_FILES = {
    "supp": "Kriegeskorte_Neuron2008_supplementalData.mat",
    "brain": "92_brainRDMs.mat",
    "behav": "92_behavRDMs.mat",
    "models": "92_modelRDMs.mat",
    "v1": "rdm92_V1model.mat",
    "hmax": "rdm92_HMAXnatImPatch.mat",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


@dataclass
class Target:
    """RDMs of one brain area (or behaviour) for one stimulus set: (n_subjects, N, N)."""

    name: str
    rdms: np.ndarray
    subjects: list[str]
    description: str = ""

    def __post_init__(self) -> None:
        if self.rdms.ndim == 2:
            self.rdms = self.rdms[None]
        if len(self.subjects) != len(self.rdms):
            raise DataError(f"target {self.name!r}: {len(self.rdms)} RDMs but {len(self.subjects)} subject names")

    @property
    def n_subjects(self) -> int:
        return len(self.rdms)

    @property
    def has_ceiling(self) -> bool:
        """A noise ceiling needs at least two independent subjects."""
        return self.n_subjects >= 2

    def mean_rdm(self) -> np.ndarray:
        return self.rdms.mean(0)


@dataclass
class Responses:
    """A response matrix: (n_repetitions, N stimuli, n_channels); one repetition if none."""

    name: str
    data: np.ndarray

    @property
    def n_repetitions(self) -> int:
        return self.data.shape[0]

    def mean(self) -> np.ndarray:
        return self.data.mean(0)


@dataclass
class Recordings:
    name: str
    stimulus_ids: list[str]
    images: np.ndarray | list[np.ndarray] | None
    categories: list[str] | None
    targets: dict[str, Target]
    references: dict[str, np.ndarray] = field(default_factory=dict)
    rdms: dict[str, np.ndarray] = field(default_factory=dict)
    responses: dict[str, Responses] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_stimuli(self) -> int:
        return len(self.stimulus_ids)

    def check(self) -> "Recordings":
        """Everything has one entry per stimulus, in order; raises DataError otherwise."""
        n = self.n_stimuli
        if n < 4:
            raise DataError(f"{self.name}: need at least 4 stimuli for RSA, got {n}")
        if len(set(self.stimulus_ids)) != n:
            dup = sorted({s for s in self.stimulus_ids if self.stimulus_ids.count(s) > 1})
            raise DataError(f"{self.name}: duplicate stimulus ids {dup[:5]}")
        if self.images is not None and len(self.images) != n:
            raise DataError(f"{self.name}: {len(self.images)} images but {n} stimuli")
        if self.categories is not None and len(self.categories) != n:
            raise DataError(f"{self.name}: {len(self.categories)} category labels but {n} stimuli")
        for t in self.targets.values():
            if t.rdms.shape[1:] != (n, n):
                raise DataError(f"{self.name}: target {t.name!r} RDMs are {t.rdms.shape[1:]}, expected ({n}, {n})")
        for k, r in self.references.items():
            if r.shape != (n, n):
                raise DataError(f"{self.name}: reference model {k!r} RDM is {r.shape}, expected ({n}, {n})")
        if not self.targets:
            raise DataError(f"{self.name}: no brain RDMs to compare with")
        return self


# --------------------------------------------------------------------------- validation


def _condensed_n(length: int) -> int | None:
    n = int(round((1 + np.sqrt(1 + 8 * length)) / 2))
    return n if n * (n - 1) // 2 == length else None


def validate_rdm(a: Any, source: str, n: int | None = None, rtol: float = 1e-5) -> np.ndarray:
    """Return a square float64 RDM from a square or condensed (upper triangle, row-major)
    array; raise DataError naming `source` when it is not one: non-square, NaN/inf, not
    symmetric, non-zero diagonal (a similarity matrix?), wrong stimulus count."""
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{source}: RDM is not numeric") from None
    if a.ndim == 1:
        m = _condensed_n(a.size)
        if m is None:
            raise DataError(f"{source}: a vector of {a.size} values is not the upper triangle of a square RDM")
        sq = np.zeros((m, m))
        iu = np.triu_indices(m, 1)
        sq[iu] = a
        sq.T[iu] = a
        a = sq
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise DataError(f"{source}: RDM must be square (N x N), got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise DataError(f"{source}: RDM has {int(bad.sum())} NaN or infinite entries")
    if n is not None and a.shape[0] != n:
        raise DataError(f"{source}: RDM is {a.shape[0]} x {a.shape[0]} but there are {n} stimuli")
    scale = max(float(np.abs(a).max()), 1e-12)
    if np.abs(a - a.T).max() > rtol * scale:
        raise DataError(f"{source}: RDM is not symmetric (max |D - D^T| = {np.abs(a - a.T).max():.3g})")
    if np.abs(np.diag(a)).max() > rtol * scale:
        raise DataError(
            f"{source}: RDM diagonal is not zero (max {np.abs(np.diag(a)).max():.3g}); "
            "is this a similarity matrix? dissimilarities are needed (e.g. 1 - similarity)"
        )
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0.0)
    return a


def _validate_rdm_stack(a: np.ndarray, source: str, n: int | None) -> np.ndarray:
    """(N,N) | (S,N,N) | condensed (P,) | (S,P) -> (S, N, N)."""
    a = np.asarray(a)
    if a.dtype == object:
        raise DataError(f"{source}: RDM is not a numeric array")
    if a.ndim == 3:
        return np.stack([validate_rdm(x, f"{source} [RDM {i}]", n) for i, x in enumerate(a)])
    if a.ndim == 2 and a.shape[0] != a.shape[1] and _condensed_n(a.shape[1]) is not None and a.shape[0] < a.shape[1]:
        return np.stack([validate_rdm(x, f"{source} [RDM {i}]", n) for i, x in enumerate(a)])
    return validate_rdm(a, source, n)[None]


# --------------------------------------------------------------------------- Kriegeskorte 92


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises several types for truncated/foreign files
        raise DataError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None


def _need(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise DataError(f"{path}: variable {key!r} missing (has {', '.join(k for k in d if not k.startswith('__'))})")
    return d[key]


def _structs(v: Any) -> list[Any]:
    return list(np.atleast_1d(v).ravel(order="F")) if isinstance(v, np.ndarray) else [v]


def _field(s: Any, name: str, path: Path) -> Any:
    if not hasattr(s, name):
        raise DataError(f"{path}: struct has no field {name!r}")
    return getattr(s, name)


def load_kriegeskorte92(root: str | Path | None = None) -> Recordings:
    """The 92-image set of Kriegeskorte et al. 2008 (see the module docstring)."""
    root = Path(root) if root is not None else data_home() / K92
    hint = f"run `bioplausible data fetch {K92}`"
    if not root.is_dir():
        raise DatasetMissing(f"{K92} data not found in {root}: {hint}")
    for key in ("supp", "brain"):
        if not (root / K92_FILES[key]).is_file():
            raise DatasetMissing(f"{K92}: {K92_FILES[key]} not found in {root}: {hint}")
    notes: list[str] = []

    # -- stimuli and the Figure 1 group RDMs
    p = root / K92_FILES["supp"]
    d = _loadmat(p)
    stim = _structs(_need(d, "stimuli_92objs", p))
    if len(stim) != 92:
        raise DataError(f"{p}: stimuli_92objs has {len(stim)} entries, expected 92")
    images = []
    for i, s in enumerate(stim):
        im = np.asarray(_field(s, "image", p))
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise DataError(f"{p}: stimulus {i} image is {im.dtype} {im.shape}, expected uint8 (H, W, 3)")
        images.append(im)
    images_arr = np.stack(images)
    categories = [str(_field(s, "category", p)) for s in stim]
    flags = {k: np.array([int(getattr(s, k, -1)) for s in stim]) for k in ("human", "face", "animal", "natural")}
    ids = [f"{i + 1:02d}" for i in range(92)]
    fig1 = {str(_field(s, "name", p)): validate_rdm(_field(s, "RDM", p), f"{p}:RDMs_mIT_hIT_fig1", 92)
            for s in _structs(_need(d, "RDMs_mIT_hIT_fig1", p))}
    for k in ("mIT_674neurons", "hITvisStim_316vx"):
        if k not in fig1:
            raise DataError(f"{p}: RDMs_mIT_hIT_fig1 has no {k!r} (has {', '.join(fig1)})")
    extra = {
        "flags": flags,
        "category_vectors": np.asarray(d.get("categoryVectors")) if "categoryVectors" in d else None,
        "category_labels": [str(x) for x in np.atleast_1d(d.get("categoryLabels", []))],
    }
    rdms: dict[str, np.ndarray] = {"mIT_674": fig1["mIT_674neurons"], "hIT_316vx": fig1["hITvisStim_316vx"]}

    # -- per-subject, per-session human IT
    p = root / K92_FILES["brain"]
    sess = _need(_loadmat(p), "RDMs", p)
    by_subject: dict[str, list[np.ndarray]] = {}
    for s in _structs(sess):
        name = str(_field(s, "name", p))
        m = re.match(r"\s*hIT\s*\|\s*(\w+)\s*\|\s*Session:\s*(\d+)", name)
        if not m:
            raise DataError(f"{p}: unexpected RDM name {name!r} (expected 'hIT | XX | Session: N')")
        r = validate_rdm(_field(s, "RDM", p), f"{p}:{name}", 92)
        rdms[f"hIT_{m.group(1)}_s{m.group(2)}"] = r
        by_subject.setdefault(m.group(1), []).append(r)
    if len(by_subject) < 2:
        raise DataError(f"{p}: need RDMs of at least 2 subjects, found {len(by_subject)}")
    subjects = sorted(by_subject)
    targets = {
        "hIT": Target("hIT", np.stack([np.mean(by_subject[s], 0) for s in subjects]), subjects,
                      "human IT, fMRI, per subject (sessions averaged)"),
        "hIT_316vx": Target("hIT_316vx", rdms["hIT_316vx"], ["group"], "human IT, fMRI, 316-voxel group RDM"),
        "mIT_674": Target("mIT_674", rdms["mIT_674"], ["group"], "monkey IT, 674 cells"),
    }

    # -- behaviour (optional file)
    p = root / K92_FILES["behav"]
    if p.is_file():
        beh = []
        for s in _structs(_need(_loadmat(p), "rdms_behav_92", p)):
            name = str(_field(s, "name", p))
            r = validate_rdm(_field(s, "RDM", p), f"{p}:{name}", 92)
            key = "behaviour_" + name.split("|")[-1].strip().replace(" ", "")
            rdms[key] = r
            beh.append((key.removeprefix("behaviour_"), r))
        targets["behaviour"] = Target("behaviour", np.stack([r for _, r in beh]), [k for k, _ in beh],
                                      "human similarity judgements, per subject")
    else:
        notes.append(f"{K92_FILES['behav']} absent: no behaviour target")

    # -- classic model RDMs (optional files)
    refs: dict[str, np.ndarray] = {}
    for key, var, label in (("v1", "rdm92_V1model", "V1model"), ("hmax", "rdm92_HMAXnatImPatch", "HMAX_natImPatch")):
        p = root / K92_FILES[key]
        if p.is_file():
            refs[label] = validate_rdm(_need(_loadmat(p), var, p), f"{p}:{var}", 92)
        else:
            notes.append(f"{K92_FILES[key]} absent: no {label} reference")
    p = root / K92_FILES["models"]
    if p.is_file():
        for s in _structs(_need(_loadmat(p), "Models", p)):
            name = str(_field(s, "name", p))
            if name == "monkeyIT":  # the monkey recording, already the mIT_674 target
                continue
            if name == "V1" and "V1model" in refs:  # identical to rdm92_V1model
                continue
            refs[name] = validate_rdm(_field(s, "RDM", p), f"{p}:{name}", 92)
    else:
        notes.append(f"{K92_FILES['models']} absent: fewer reference models")
    for k, r in refs.items():
        rdms[f"model_{k}"] = r

    return Recordings(K92, ids, images_arr, categories, targets, refs, rdms, {}, extra, notes).check()


# --------------------------------------------------------------------------- user files


def read_stimulus_order(path: str | Path) -> list[str]:
    """One stimulus id per line (blank lines and lines starting with # ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: stimulus order file not found")
    ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not ids:
        raise DataError(f"{path}: no stimulus ids")
    if len(set(ids)) != len(ids):
        dup = sorted({s for s in ids if ids.count(s) > 1})
        raise DataError(f"{path}: duplicate stimulus ids {dup[:5]}")
    return ids


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read_csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="") as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t ")
            except csv.Error:
                dialect = csv.excel
            rows = [[c.strip() for c in r] for r in csv.reader(f, dialect) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: empty CSV file")
    return rows


def _to_float(cells: list[list[str]], path: Path) -> np.ndarray:
    try:
        return np.array([[float(c) if c.lower() not in ("", "nan", "na") else np.nan for c in r] for r in cells])
    except ValueError as e:
        raise DataError(f"{path}: non-numeric value in CSV ({e})") from None


def _reorder(file_ids: list[str], order: list[str] | None, path: Path) -> np.ndarray | None:
    """Index that takes the file's stimuli into `order`; errors name missing/extra ids."""
    if order is None:
        return None
    if len(set(file_ids)) != len(file_ids):
        raise DataError(f"{path}: duplicate stimulus ids in the file")
    missing = [s for s in order if s not in set(file_ids)]
    if missing:
        raise DataError(f"{path}: missing stimulus {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [s for s in file_ids if s not in set(order)]
    if extra:
        raise DataError(f"{path}: stimulus {extra[0]!r} is not in the stimulus order" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    pos = {s: i for i, s in enumerate(file_ids)}
    return np.array([pos[s] for s in order])


def _numeric_mat_vars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("__")}


def read_rdm_file(path: str | Path, stimulus_ids: Sequence[str] | None = None,
                  variable: str | None = None) -> np.ndarray:
    """RDMs from one file, in the order of `stimulus_ids`: returns (n_subjects, N, N).

    - `.npy`: (N, N), (S, N, N), condensed (N(N-1)/2,) or (S, N(N-1)/2) upper triangles.
    - `.mat`: the variable `variable`, or the only variable; numeric as for .npy, or a
      struct array with an `RDM` field (as in the Kriegeskorte files).
    - `.csv`: a square matrix; with a header row of stimulus ids (and optionally the ids
      again in the first column) it is reordered to `stimulus_ids`. One RDM per file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: RDM file not found")
    order = list(stimulus_ids) if stimulus_ids is not None else None
    n = len(order) if order is not None else None
    suf = path.suffix.lower()
    if suf == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy array ({e})") from None
        return _validate_rdm_stack(a, str(path), n)
    if suf == ".mat":
        d = _numeric_mat_vars(_loadmat(path))
        if variable is not None:
            a = _need(d, variable, path)
            src = f"{path}:{variable}"
        elif len(d) == 1:
            (variable, a), = d.items()
            src = f"{path}:{variable}"
        else:
            raise DataError(f"{path}: {len(d)} variables ({', '.join(d) or 'none'}); name the RDM variable")
        if isinstance(a, np.ndarray) and a.dtype == object or hasattr(a, "_fieldnames"):
            structs = _structs(a)
            if not all(hasattr(s, "RDM") for s in structs):
                raise DataError(f"{src}: neither a numeric array nor structs with an RDM field")
            return np.stack([validate_rdm(s.RDM, f"{src}[{i}]", n) for i, s in enumerate(structs)])
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{src}: not a numeric array")
        return _validate_rdm_stack(a, src, n)
    if suf in (".csv", ".tsv", ".txt"):
        rows = _read_csv_rows(path)
        header = None
        if not all(_is_number(c) or c.lower() in ("nan", "na", "") for c in rows[0]):
            header, rows = rows[0], rows[1:]
        row_ids = None
        if rows and not all(_is_number(c) or c.lower() in ("nan", "na", "") for c in (r[0] for r in rows)):
            row_ids = [r[0] for r in rows]
            rows = [r[1:] for r in rows]
        if header is not None and row_ids is not None and len(header) == len(rows) + 1:
            header = header[1:]  # corner cell above the row ids
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise DataError(f"{path}: rows have different numbers of values ({sorted(widths)})")
        a = _to_float(rows, path)
        if a.shape[0] != a.shape[1]:
            raise DataError(f"{path}: RDM must be square (N x N), got shape {a.shape}")
        ids = header if header is not None else row_ids
        if header is not None and row_ids is not None and header != row_ids:
            raise DataError(f"{path}: row ids and column ids differ")
        if ids is not None and len(ids) != a.shape[0]:
            raise DataError(f"{path}: {len(ids)} stimulus ids but a {a.shape[0]} x {a.shape[0]} matrix")
        if ids is not None and order is not None:
            if len(ids) != n:
                raise DataError(f"{path}: RDM is {len(ids)} x {len(ids)} but there are {n} stimuli")
            idx = _reorder(ids, order, path)
            a = a[np.ix_(idx, idx)]
        return validate_rdm(a, str(path), n)[None]
    raise DataError(f"{path}: unsupported RDM file type {suf!r} (use .npy, .mat or .csv)")


def read_responses_file(path: str | Path, stimulus_ids: Sequence[str] | None = None,
                        variable: str | None = None) -> np.ndarray:
    """Response matrix from one file: returns (n_repetitions, N, n_channels), float64.

    - `.npy` / `.mat`: (N, C), or (R, N, C) with R repetitions (repetition axis first).
    - `.csv`: header row; a column `stimulus` with the ids (rows of the same stimulus are
      its repetitions, the same number for each), an optional column `repetition`
      (ignored apart from ordering), every other column a channel.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: response file not found")
    order = list(stimulus_ids) if stimulus_ids is not None else None
    suf = path.suffix.lower()
    if suf in (".npy", ".mat"):
        if suf == ".npy":
            try:
                a = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise DataError(f"{path}: not a readable .npy array ({e})") from None
        else:
            d = _numeric_mat_vars(_loadmat(path))
            if variable is None:
                if len(d) != 1:
                    raise DataError(f"{path}: {len(d)} variables ({', '.join(d) or 'none'}); name the response variable")
                (variable, a), = d.items()
            else:
                a = _need(d, variable, path)
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{path}: responses are not a numeric array")
        a = a.astype(np.float64)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise DataError(f"{path}: responses must be (stimuli, channels) or (repetitions, stimuli, channels), got {a.shape}")
        if order is not None and a.shape[1] != len(order):
            raise DataError(f"{path}: responses for {a.shape[1]} stimuli but there are {len(order)} stimuli")
    elif suf in (".csv", ".tsv", ".txt"):
        rows = _read_csv_rows(path)
        header, rows = [h.lower() for h in rows[0]], rows[1:]
        if "stimulus" not in header:
            raise DataError(f"{path}: needs a header with a 'stimulus' column")
        si = header.index("stimulus")
        ri = header.index("repetition") if "repetition" in header else None
        chans = [i for i in range(len(header)) if i not in (si, ri)]
        if not chans:
            raise DataError(f"{path}: no channel columns")
        if any(len(r) != len(header) for r in rows):
            raise DataError(f"{path}: rows have different numbers of values than the header")
        by_stim: dict[str, list[tuple[str, list[str]]]] = {}
        for r in rows:
            by_stim.setdefault(r[si], []).append((r[ri] if ri is not None else "", [r[i] for i in chans]))
        ids = list(by_stim)
        counts = {len(v) for v in by_stim.values()}
        if len(counts) != 1:
            raise DataError(f"{path}: unequal numbers of repetitions per stimulus ({sorted(counts)})")
        idx = _reorder(ids, order, path) if order is not None else np.arange(len(ids))
        reps = counts.pop()
        a = np.empty((reps, len(ids), len(chans)))
        for j, s in enumerate(ids):
            entries = sorted(by_stim[s], key=lambda e: (float(e[0]) if _is_number(e[0]) else 0.0, e[0])) if ri is not None else by_stim[s]
            a[:, j] = _to_float([e[1] for e in entries], path)
        a = a[:, idx]
    else:
        raise DataError(f"{path}: unsupported response file type {suf!r} (use .npy, .mat or .csv)")
    bad = ~np.isfinite(a)
    if bad.any():
        raise DataError(f"{path}: responses have {int(bad.sum())} NaN or infinite values")
    if a.shape[1] < 4:
        raise DataError(f"{path}: responses for {a.shape[1]} stimuli; RSA needs at least 4")
    if a.shape[-1] == 0 or a.shape[0] == 0:
        raise DataError(f"{path}: responses have no {'channels' if a.shape[-1] == 0 else 'repetitions'} "
                        f"(shape {a.shape})")
    return a


def read_images(folder: str | Path, stimulus_ids: Sequence[str]) -> np.ndarray | list[np.ndarray]:
    """One image per stimulus id, `<folder>/<id>.<ext>`, as uint8 RGB (H, W, 3); stacked
    into one array when all have the same size, else a list."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: stimulus image folder not found")
    by_stem: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, p)
    out = []
    for s in stimulus_ids:
        p = by_stem.get(s)
        if p is None:
            raise DataError(f"{folder}: missing stimulus image for {s!r} (expected {s}.png, .jpg, ...)")
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{p}: unreadable image ({e})") from None
    if len({im.shape for im in out}) == 1:
        return np.stack(out)
    return out


def _files(folder: Path, kinds: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in kinds) if folder.is_dir() else []


def load_folder(root: str | Path, brain_distance: str = "correlation") -> Recordings:
    """A folder of the user's recordings (layout in the module docstring)."""
    from . import rsa

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: recordings folder not found")
    ids = read_stimulus_order(root / "stimuli.txt")
    n = len(ids)
    images = read_images(root / "images", ids) if (root / "images").exists() else None
    categories = None
    if (root / "categories.txt").is_file():
        categories = [ln.strip() for ln in (root / "categories.txt").read_text().splitlines() if ln.strip()]
        if len(categories) != n:
            raise DataError(f"{root / 'categories.txt'}: {len(categories)} labels but {n} stimuli")
    targets: dict[str, Target] = {}
    rdms: dict[str, np.ndarray] = {}
    responses: dict[str, Responses] = {}
    for p in _files(root / "rdms", (".npy", ".mat", ".csv")):
        r = read_rdm_file(p, ids)
        targets[p.stem] = Target(p.stem, r, [f"s{i + 1}" for i in range(len(r))] if len(r) > 1 else ["group"], f"RDMs from {p.name}")
        for i, x in enumerate(r):
            rdms[f"{p.stem}_{i + 1}" if len(r) > 1 else p.stem] = x
    for p in _files(root / "responses", (".npy", ".mat", ".csv")):
        if p.stem in targets:
            raise DataError(f"{p}: target {p.stem!r} also given as an RDM file")
        a = read_responses_file(p, ids)
        responses[p.stem] = Responses(p.stem, a)
        rdm = rsa.responses_rdm(a, brain_distance)
        targets[p.stem] = Target(p.stem, rdm, ["group"], f"{brain_distance} RDM of responses in {p.name}")
        rdms[p.stem] = rdm
    if not targets:
        raise DataError(f"{root}: no RDM files in rdms/ and no response files in responses/")
    return Recordings(root.name, ids, images, categories, targets, {}, rdms, responses).check()


def load_recordings(data: str | Path, brain_distance: str = "correlation") -> Recordings:
    """`kriegeskorte92` (fetched data) or the path of a folder laid out as in `load_folder`."""
    if str(data) == K92:
        return load_kriegeskorte92()
    p = Path(data)
    if p.is_dir():
        if (p / K92_FILES["supp"]).is_file():
            return load_kriegeskorte92(p)
        return load_folder(p, brain_distance)
    raise DataError(f"--data {data}: neither {K92!r} nor a recordings folder")
