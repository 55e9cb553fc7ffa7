"""The report: tables, plots and one HTML page, built from the results store alone.

`build(store, out)` reads the runs, their epochs, the criteria matrix and the brain
comparison's tables from the store, and writes (each file atomically, temp + rename):

- accuracy.md / accuracy.tex / accuracy.csv: rule x (dataset, architecture), mean ± sd of
  the final test accuracy over seeds (sample sd, n-1), best mean per column in bold;
- criteria.md / criteria.csv: the plausibility criteria matrix;
- brain.md / brain.csv: the brain-similarity table (when the store has brain results);
- runs.md / runs.csv: runs per cell (done, diverged, failed; time per epoch);
- learning_curves, accuracy_vs_plausibility, time_vs_accuracy, rdms, brain_similarity
  (.png and .svg) where the store has what they need;
- index.html: all of the above in one self-contained page (images as data URIs).

Nothing is recomputed from checkpoints or data: every number printed is in the store.
"""

from __future__ import annotations

import html as _html
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["build", "collect"]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


VERDICT_SCORE = {"yes": 1.0, "partial": 0.5, "no": 0.0}


def stale_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs recorded by code other than this checkout's (their code fingerprint differs, or
    they predate fingerprints): a report that prints them must say so."""
    from ..experiments.fingerprint import code_fingerprint

    out = []
    for r in runs:
        try:
            current = code_fingerprint(r["rule"])
        except ValueError:  # a rule this version does not have: nothing to compare with
            continue
        if r.get("code") != current:
            out.append(r)
    return out


def _stale_note(runs: list[dict[str, Any]]) -> list[str]:
    stale = stale_runs(runs)
    if not stale:
        return []
    cells = sorted({f"{r['rule']}/{r['model']}/{r['data']}" for r in stale})
    shown = ", ".join(cells[:12]) + (f" and {len(cells) - 12} more" if len(cells) > 12 else "")
    return [f"{len(stale)} of the {len(runs)} runs in this table were recorded by other code than this "
            f"checkout's (or before runs recorded their code): {shown}. `bioplausible compare` or `bioplausible "
            "sweep` runs them again."]


def _verdict(v: Any) -> str | None:
    """A criterion's verdict from a matrix cell: 'yes'/'no'/'partial', or a dict with the
    measured verdict (preferred) or the claimed one."""
    if isinstance(v, dict):
        for k in ("measured", "verdict", "claimed", "claim"):
            if isinstance(v.get(k), str) and v[k].lower() in VERDICT_SCORE:
                return v[k].lower()
        return None
    if isinstance(v, str):
        s = v.strip().lower().split()[0] if v.strip() else ""
        return s if s in VERDICT_SCORE else None
    if isinstance(v, bool):
        return "yes" if v else "no"
    return None


def plausibility_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per rule: the mean over criteria of yes=1, partial=0.5, no=0 (measured where a probe
    decided, else claimed; cells in error left out). Rows are the stored criteria matrix."""
    from ..criteria.claims import CRITERIA
    from ..criteria.render import cell_verdict

    scores: dict[str, float] = {}
    for r in rows:
        rule = r.get("rule")
        if not isinstance(rule, str):
            continue
        if isinstance(r.get("cells"), dict):
            # the six criteria (C2a, a stricter probe-only property, would count locality twice)
            vs = [cell_verdict(c) for k, c in r["cells"].items() if k in CRITERIA]
        else:  # a flat row: {rule, c1_...: verdict, ...}
            vs = [_verdict(v) for k, v in r.items() if k.lower().startswith("c") and k[1:2].isdigit()]
        vs = [VERDICT_SCORE[v] for v in vs if v is not None]
        if vs and not r.get("error"):
            scores[rule] = sum(vs) / len(vs)
    return scores


def collect(store, run_ids: list[str] | None = None, runs_selection: str | None = None) -> dict[str, Any]:
    """Everything the report shows, read from the store."""
    runs = store.select(runs_selection) if runs_selection else store.runs()
    if run_ids is not None:
        wanted = set(run_ids)
        runs = [r for r in runs if r["id"] in wanted]
    epochs = {r["id"]: store.epochs(r["id"]) for r in runs}
    crit_rows, crit_meta = store.criteria()
    from .tables import read_brain

    return {"runs": runs, "epochs": epochs, "criteria": crit_rows, "criteria_meta": crit_meta,
            "brain": read_brain(store, [r["id"] for r in runs])}


def build(store, out: str | Path, run_ids: list[str] | None = None, runs: str | None = None,
          metric: str = "test_acc", title: str = "bioplausible: results") -> dict[str, Path]:
    """Write the report for the runs of `run_ids` (or the `runs` selection, or all runs).
    Returns the paths written, by name."""
    from . import html as H
    from . import plots as P
    from . import tables as T

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = collect(store, run_ids, runs)
    written: dict[str, Path] = {}

    def write(name: str, text: str) -> None:
        p = out / name
        _atomic_text(p, text)
        written[name] = p

    chosen, variant_notes = T.choose_variants(d["runs"])
    sections: list[H.Section] = []

    # accuracy
    acc = T.accuracy_table(chosen, metric)
    if acc.columns:
        write("accuracy.md", T.accuracy_markdown(acc))
        write("accuracy.tex", T.accuracy_latex(acc))
        write("accuracy.csv", T.accuracy_csv(acc))
        body = '<div class="scroll">' + T.accuracy_html(acc) + "</div>"
        n_seeds = sorted({st.n for st in acc.cells.values() if st.n})
        per = "/".join(map(str, n_seeds)) or "0"
        acc_notes = [f"{metric.replace('_', ' ')} in %, mean ± sd (sample sd, n - 1) over seeds "
                     f"({per} seed{'s' if per != '1' else ''} per cell; no sd with one seed); best mean per column "
                     "in bold; – = not run (the rule does not support the model, or the dataset was missing); "
                     "diverged/failed runs are counted beside the mean and listed under Runs. "
                     "Files: accuracy.md, accuracy.tex, accuracy.csv."] + variant_notes + _stale_note(chosen)
    else:
        body = "<p>No runs in the store for this report.</p>"
        acc_notes = []
    sections.append(H.Section("accuracy", "Accuracy", body, acc_notes))

    # criteria
    crit = d["criteria"]
    if crit:
        from ..criteria.render import render as render_criteria

        for fmt, fname in (("markdown", "criteria.md"), ("latex", "criteria.tex"), ("csv", "criteria.csv")):
            write(fname, render_criteria(crit, fmt))
        meta = d["criteria_meta"]
        sections.append(H.Section("criteria", "Plausibility criteria",
                                  '<div class="scroll">' + render_criteria(crit, "html") + "</div>",
                                  [f"Measured with bioplausible {meta.get('version')} at {meta.get('created')}. "
                                            "Files: criteria.md, criteria.tex, criteria.csv."]))
    else:
        sections.append(H.Section("criteria", "Plausibility criteria",
                                  "<p>No criteria matrix in the store (run <code>bioplausible compare</code> "
                                  "without --no-criteria).</p>"))

    # brain
    brain = d["brain"]
    brain_status = (brain or {}).get("status") or []
    if brain and brain.get("rows"):
        header, rows = T.generic(brain["pivot_rows"], brain["pivot_columns"])
        verdicts = brain.get("verdicts") or []
        md = T.markdown([T.md_text(h) for h in header], [[T.md_text(c) for c in r] for r in rows])
        if verdicts:
            md += "\nVerdicts (corrected tests):\n\n" + "".join(f"- {T.md_text(v)}\n" for v in verdicts)
        md += "".join(f"\n{T.md_text(n)}\n" for n in brain_status + brain.get("notes", []))
        write("brain.md", md)
        write("brain.csv", T.csv_text(*T.generic(brain["rows"], brain["columns"])))
        vhtml = ("<p><b>Verdicts</b> (what the corrected tests say):</p><ul>"
                 + "".join(f"<li>{_html.escape(v)}</li>" for v in verdicts) + "</ul>") if verdicts else ""
        sections.append(H.Section("brain", "Brain similarity", vhtml + '<div class="scroll">'
                                  + T.html_table(header, rows, cls="brain") + "</div>",
                                  brain_status + brain.get("notes", []) + ["Files: brain.md, brain.csv."]))
    else:
        why = "".join(f"<p>{_html.escape(m)}</p>" for m in brain_status)
        sections.append(H.Section("brain", "Brain similarity", why or
                                  "<p>No brain comparison in the store for these runs "
                                  "(needs the brain data: <code>bioplausible data fetch kriegeskorte92</code>).</p>"))
        brain = None

    # plots
    figs = []
    f = P.learning_curves(chosen, d["epochs"], out)
    figs.append(f)
    scores = plausibility_scores(crit)
    figs.append(P.accuracy_vs_plausibility(chosen, scores, out, metric) if scores else None)
    figs.append(P.time_vs_accuracy(chosen, out, metric))
    if brain:
        figs.append(P.rdms(brain["rdms"], out, "Each brain target's mean RDM, then each rule's (first seed's) "
                           "layer most similar to the first target; colour = dissimilarity percentile."))
        figs.append(P.brain_similarity(brain["targets"], out))
    figs = [f for f in figs if f is not None]
    for f in figs:
        written[f"{f.name}.png"] = out / f"{f.name}.png"
        written[f"{f.name}.svg"] = out / f"{f.name}.svg"
    plot_notes = []
    if not scores:
        plot_notes.append("Accuracy vs plausibility needs the criteria matrix in the store.")
    if not brain:
        plot_notes.append("RDM and brain-similarity plots need brain results in the store.")
    sections.append(H.Section("plots", "Plots", "".join(H.figure_html(f) for f in figs) or "<p>No plots.</p>", plot_notes))

    # runs
    header, rows = T.status_table(d["runs"])
    write("runs.md", T.markdown(header, rows))
    write("runs.csv", T.csv_text(header, rows))
    bad = [r for r in d["runs"] if r["status"] != "done"]
    bad_html = ""
    if bad:
        bh = ["run", "rule", "model", "data", "seed", "status", "reason"]
        br = [[r["id"], r["rule"], r["model"], r["data"], str(r["seed"]), r["status"],
               (r.get("reason") or "").splitlines()[0][:200] if r.get("reason") else ""] for r in bad]
        bad_html = "<h3>Runs that did not finish</h3>" + T.html_table(bh, br, cls="failed")
    sections.append(H.Section("runs", "Runs", '<div class="scroll">' + T.html_table(header, rows, cls="runs") + "</div>" + bad_html,
                              ["Seconds per epoch and samples per second are training time only, "
                               "as recorded on the machine that ran them. Files: runs.md, runs.csv."]))

    # page
    vers = sorted({json.dumps(r.get("versions") or {}, sort_keys=True) for r in d["runs"]})
    commits = sorted({str(r.get("git_commit")) for r in d["runs"] if r.get("git_commit")})
    devices = sorted({str(r.get("device")) for r in d["runs"] if r.get("device")})
    statuses = {s: sum(r["status"] == s for r in d["runs"]) for s in ("done", "diverged", "failed")}
    meta = [
        ("store", str(store.path)),
        ("runs", f"{len(d['runs'])} ({statuses['done']} done, {statuses['diverged']} diverged, {statuses['failed']} failed)"),
        ("versions", "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(s).items()) for s in vers) or "-"),
        ("git commits", ", ".join(commits) or "-"),
        ("devices", ", ".join(devices) or "-"),
        ("last run finished", max((r.get("finished") or "" for r in d["runs"]), default="") or "-"),
    ]
    write("index.html", H.page(title, meta, sections))
    written["html"] = out / "index.html"
    return written
