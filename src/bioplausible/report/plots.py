"""Plots of the report (matplotlib, Agg), each written as PNG and SVG, from store rows only:
learning curves per rule, accuracy vs plausibility score, time per epoch vs accuracy,
RDMs and brain similarity with the noise ceiling."""

from __future__ import annotations

import io
import math
import textwrap
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .tables import DATA_NAMES, MODEL_NAMES, rule_order  # noqa: E402


@dataclass
class Figure:
    name: str  # file stem
    title: str
    caption: str
    png: bytes
    svg: bytes


def _atomic(path: Path, data: bytes) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _finish(fig, name: str, title: str, caption: str, out: Path, rect=None) -> Figure:
    fig.tight_layout(rect=rect)
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    # no date in the SVG: the same store gives byte-identical files
    fig.savefig(svg, format="svg", metadata={"Date": None})
    plt.close(fig)
    f = Figure(name, title, caption, png.getvalue(), svg.getvalue())
    _atomic(out / f"{name}.png", f.png)
    _atomic(out / f"{name}.svg", f.svg)
    return f


def _combo_label(data: str, model: str) -> str:
    return f"{DATA_NAMES.get(data, data)} {MODEL_NAMES.get(model, model)}"


def learning_curves(runs: list[dict], epochs: dict[str, list[dict]], out: Path) -> Figure | None:
    """One panel per rule: test accuracy per epoch, one line per dataset/model (mean over
    seeds, band = ± sd)."""
    done = [r for r in runs if r["status"] == "done" and epochs.get(r["id"])]
    if not done:
        return None
    rules = rule_order({r["rule"] for r in done})
    combos = sorted({(r["data"], r["model"]) for r in done})
    colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(combos)}
    ncol = min(4, len(rules))
    nrow = math.ceil(len(rules) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False, sharey=True)
    for ax, rule in zip(axes.flat, rules):
        for combo in combos:
            curves = [[e["test_acc"] for e in epochs[r["id"]]] for r in done
                      if r["rule"] == rule and (r["data"], r["model"]) == combo]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves], dtype=float) * 100
            x = np.arange(1, n + 1)
            mean = arr.mean(0)
            ax.plot(x, mean, marker="o", ms=3, color=colors[combo], label=_combo_label(*combo))
            if len(arr) > 1:
                sd = arr.std(0, ddof=1)
                ax.fill_between(x, mean - sd, mean + sd, color=colors[combo], alpha=0.2, lw=0)
        ax.set_title(rule)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    for ax in list(axes.flat)[len(rules):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(4, len(seen)), frameon=False)
    legend_h = 0.35 * math.ceil(len(seen) / 4) / (2.6 * nrow)  # inches of legend as a figure fraction
    f = _finish(fig, "learning_curves", "Learning curves per rule",
                "Test accuracy after each epoch (mean over seeds; band: ± sd).", out, rect=(0, legend_h + 0.02, 1, 1))
    return f


def _mean_by(runs: list[dict], key, metric: str) -> dict:
    acc: dict[Any, list[float]] = {}
    for r in runs:
        v = (r.get("metrics") or {}).get(metric)
        if r["status"] == "done" and isinstance(v, (int, float)) and math.isfinite(v):
            acc.setdefault(key(r), []).append(float(v))
    return {k: statistics.fmean(v) for k, v in acc.items()}


def accuracy_vs_plausibility(runs: list[dict], scores: dict[str, float], out: Path, metric: str = "test_acc",
                             score_label: str = "plausibility score (mean over criteria: yes 1, partial 0.5, no 0)") -> Figure | None:
    """Mean accuracy of each rule on each dataset/model against the rule's plausibility score
    (from the criteria matrix in the store)."""
    means = _mean_by(runs, lambda r: (r["rule"], r["data"], r["model"]), metric)
    pts = [(k, v) for k, v in means.items() if k[0] in scores]
    if not pts:
        return None
    combos = sorted({(d, m) for (_, d, m), _ in pts})
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, combo in enumerate(combos):
        xs = [scores[r] for (r, d, m), _ in pts if (d, m) == combo]
        ys = [v * 100 for (r, d, m), v in pts if (d, m) == combo]
        ax.scatter(xs, ys, color=plt.cm.tab10(i % 10), label=_combo_label(*combo), s=30)
    # one label per rule, at its best point
    for rule in sorted({r for (r, _, _), _ in pts}):
        best = max(v for (r, _, _), v in pts if r == rule)
        ax.annotate(rule, (scores[rule], best * 100), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xlabel(score_label)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, "accuracy_vs_plausibility", "Accuracy vs plausibility",
                   f"Mean test accuracy over seeds against the rule's {score_label}.", out)


def time_vs_accuracy(runs: list[dict], out: Path, metric: str = "test_acc") -> Figure | None:
    """Seconds per training epoch against accuracy, one point per rule and dataset/model."""
    accs = _mean_by(runs, lambda r: (r["rule"], r["data"], r["model"]), metric)
    times: dict[tuple, list[float]] = {}
    for r in runs:
        if r["status"] == "done" and r.get("epoch_time"):
            times.setdefault((r["rule"], r["data"], r["model"]), []).append(float(r["epoch_time"]))
    keys = [k for k in accs if k in times]
    if not keys:
        return None
    combos = sorted({(d, m) for _, d, m in keys})
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, combo in enumerate(combos):
        ks = [k for k in keys if (k[1], k[2]) == combo]
        xs = [statistics.fmean(times[k]) for k in ks]
        ys = [accs[k] * 100 for k in ks]
        ax.scatter(xs, ys, color=plt.cm.tab10(i % 10), label=_combo_label(*combo), s=30)
        for k, x, y in zip(ks, xs, ys):
            ax.annotate(k[0], (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per training epoch (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _finish(fig, "time_vs_accuracy", "Time per epoch vs accuracy",
                   "Mean training time per epoch (recorded with each run; depends on the machine) "
                   "against mean test accuracy.", out)


def _percentile(m: np.ndarray) -> np.ndarray:
    """Off-diagonal dissimilarities as percentiles (0-100), so RDMs of different scales
    compare by their structure (the usual way RDMs are shown)."""
    m = np.asarray(m, dtype=float)
    iu = np.triu_indices(len(m), 1)
    v = m[iu]
    ranks = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    out = np.zeros_like(m)
    out[iu] = 100.0 * ranks / max(len(v) - 1, 1)
    return out + out.T


def rdms(panels: list[tuple[str, Any]], out: Path, caption: str) -> Figure | None:
    """Representational dissimilarity matrices, one panel each (title, square matrix)."""
    panels = [(t, np.asarray(m, dtype=float)) for t, m in panels if m is not None and np.ndim(m) == 2 and len(m) > 1]
    if not panels:
        return None
    ncol = min(6, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 2.45 * nrow), squeeze=False)
    im = None
    for ax, (title, m) in zip(axes.flat, panels):
        im = ax.imshow(_percentile(m), cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.5, label="dissimilarity (percentile)")
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    fig.savefig(svg, format="svg", metadata={"Date": None})
    plt.close(fig)
    f = Figure("rdms", "Representational dissimilarity matrices", caption, png.getvalue(), svg.getvalue())
    _atomic(out / "rdms.png", f.png)
    _atomic(out / "rdms.svg", f.svg)
    return f


KIND_COLORS = {"trained": "tab:blue", "untrained": "0.6", "pixels": "0.35", "reference": "tab:orange"}


def brain_similarity(targets: dict[str, dict], out: Path) -> Figure | None:
    """One panel per brain target: each group's best-layer similarity with its 95% bootstrap
    interval (blue: trained, grey: untrained baseline, orange: reference model), and the noise
    ceiling as a grey band."""
    targets = {t: v for t, v in targets.items()
               if any(isinstance(b.get("value"), (int, float)) and math.isfinite(b["value"]) for b in v["bars"])}
    if not targets:
        return None
    nmax = max(len(v["bars"]) for v in targets.values())
    fig, axes = plt.subplots(len(targets), 1, figsize=(max(6.0, 0.16 * nmax + 2.5), 3.6 * len(targets)), squeeze=False)
    for ax, (t, v) in zip(axes[:, 0], targets.items()):
        bars = v["bars"]
        x = np.arange(len(bars))
        y = np.array([b["value"] if isinstance(b.get("value"), (int, float)) else np.nan for b in bars], float)
        lo = np.array([b["lo"] if isinstance(b.get("lo"), (int, float)) else np.nan for b in bars], float)
        hi = np.array([b["hi"] if isinstance(b.get("hi"), (int, float)) else np.nan for b in bars], float)
        err = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
        err = np.where(np.isfinite(err), err, 0)
        ax.bar(x, np.nan_to_num(y), yerr=err, capsize=1.5, color=[KIND_COLORS.get(b["kind"], "0.3") for b in bars])
        if v.get("ceiling"):
            ax.axhspan(v["ceiling"][0], v["ceiling"][1], color="0.5", alpha=0.3, lw=0, label="noise ceiling")
            ax.legend(fontsize=7, loc="upper right")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, [b["label"] for b in bars], rotation=75, ha="right", fontsize=6)
        ax.set_xlim(-0.7, len(bars) - 0.3)
        ax.set_title(textwrap.fill(f"{t}: {v.get('description', '')}", 100), fontsize=8)
        ax.set_ylabel("similarity (best layer)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return _finish(fig, "brain_similarity", "Brain similarity",
                   "Best-layer similarity with each brain target (held-out half of the stimuli), 95% bootstrap "
                   "intervals; blue: trained, grey: untrained baseline, orange: reference model; grey band: the "
                   "noise ceiling.", out)
