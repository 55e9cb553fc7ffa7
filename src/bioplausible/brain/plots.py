"""Figures of a brain comparison (matplotlib, Agg backend; PNG and SVG).

- `rdms.png/svg`: RDM heatmaps, each rank-transformed to percentiles (as in Kriegeskorte
  et al. 2008): every target's mean RDM, then each trained group's best-layer RDM (its first
  run), each reference model.
- `scores.png/svg`: one panel per target: best-layer similarity per group with its 95%
  interval, trained rules, untrained baselines and reference models in different colours,
  and the noise ceiling as a grey band (lower to upper bound).
- `layers.png/svg`: layer-wise profile per trained group and target, with the noise
  ceiling band.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_all", "plot_rdms", "plot_scores", "plot_layers"]

COLORS = {"trained": "#1f77b4", "untrained": "#aaaaaa", "pixels": "#555555", "reference": "#ff7f0e"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{stem}.{ext}"
        fig.savefig(p, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(p)
    return paths


def _percentile(m: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    n = len(m)
    iu = np.triu_indices(n, 1)
    v = rankdata(m[iu]) / len(iu[0]) * 100
    out = np.zeros_like(m, dtype=float)
    out[iu] = v
    out.T[iu] = v
    return out


def plot_rdms(result: Any, out: Path) -> list[Path]:
    from .rsa import to_matrices

    plt = _plt()
    panels: list[tuple[str, np.ndarray]] = [(f"{t} (brain)", m) for t, m in result.target_rdms.items()]
    t0 = result.targets[0]
    firsts: dict[str, Any] = {}
    for s in result.sources:
        if s.kind != "untrained" and s.group not in firsts:
            firsts[s.group] = s
    best = {(r["source"]): r["layer_index"] for r in result.rows if r["target"] == t0 and r["best_layer"]}
    for g, s in firsts.items():
        li = best.get(s.key, len(s.layers) - 1)
        title = f"{g}: {s.layers[li]}" if s.kind == "trained" else g if s.kind == "pixels" else f"{g} (model)"
        panels.append((title, to_matrices(s.vectors[li])[0]))
    k = len(panels)
    cols = min(6, k)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    im = None
    for ax, (title, m) in zip(axes.ravel(), panels):
        im = ax.imshow(_percentile(m), cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[k:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="dissimilarity (percentile)")
    fig.suptitle(f"RDMs, {result.recordings} (best layer for {t0}; {result.distance} distance)", fontsize=10)
    paths = _save(fig, out, "rdms")
    plt.close(fig)
    return paths


def _grid(plt, n: int, w: float, h: float):
    cols = min(2, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()[:n]


def plot_scores(result: Any, out: Path) -> list[Path]:
    plt = _plt()
    targets = result.targets
    n_groups = max(len(result.summary_for(t)) for t in targets)
    fig, axes = _grid(plt, len(targets), max(4.0, 0.32 * n_groups + 1.5), 4.0)
    kind_rank = {"trained": 0, "untrained": 1, "pixels": 2, "reference": 3}
    for ax, t in zip(axes, targets):
        rows = sorted(result.summary_for(t), key=lambda r: kind_rank.get(r["kind"], 3))
        x = np.arange(len(rows))
        y = np.array([r["score"] if r["score"] is not None else np.nan for r in rows], float)
        lo = np.array([r["ci_low"] for r in rows], float)
        hi = np.array([r["ci_high"] for r in rows], float)
        err = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
        err = np.where(np.isfinite(err), err, 0)
        ax.bar(x, np.nan_to_num(y), yerr=err, color=[COLORS.get(r["kind"], "#555") for r in rows], capsize=2)
        c = result.ceilings[t]
        if np.isfinite(c["cv_noise_lower"]):
            ax.axhspan(c["cv_noise_lower"], c["cv_noise_upper"], color="0.6", alpha=0.35, lw=0, label="noise ceiling")
            ax.legend(fontsize=7, loc="upper right")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([r["group"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{t} ({c['n_subjects']} RDM{'s' if c['n_subjects'] > 1 else ''})", fontsize=9)
        ax.set_ylabel(f"best-layer {result.method} (held-out half)", fontsize=8)
    fig.suptitle(f"{result.recordings}: similarity with 95% intervals ({result.n_boot} bootstrap resamples of "
                 "stimuli); blue: trained, grey: untrained, orange: reference models", fontsize=9)
    fig.tight_layout()
    paths = _save(fig, out, "scores")
    plt.close(fig)
    return paths


def plot_layers(result: Any, out: Path) -> list[Path]:
    plt = _plt()
    targets = result.targets
    fig, axes = _grid(plt, len(targets), 4.6, 3.4)
    for ax, t in zip(axes, targets):
        names: list[str] = []
        for r in result.summary_for(t):
            if r["kind"] in ("reference", "pixels"):
                continue
            prof = r["layer_scores"]
            if len(prof) > len(names):
                names = list(prof)
            ax.plot(range(len(prof)), list(prof.values()), marker="o", ms=3,
                    ls="--" if r["kind"] == "untrained" else "-", label=r["group"],
                    color=None if r["kind"] == "trained" else "0.6")
        c = result.ceilings[t]
        if np.isfinite(c["noise_lower"]):
            ax.axhspan(c["noise_lower"], c["noise_upper"], color="0.6", alpha=0.3, lw=0)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{t}: layer-wise profile (all stimuli)", fontsize=9)
        ax.set_ylabel(result.method, fontsize=8)
    h, lab = axes[0].get_legend_handles_labels()
    if h:
        fig.legend(h, lab, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    paths = _save(fig, out, "layers")
    plt.close(fig)
    return paths


def plot_all(result: Any, out: str | Path) -> list[Path]:
    out = Path(out)
    return plot_rdms(result, out) + plot_scores(result, out) + plot_layers(result, out)
