"""Tables of the report, computed from store rows only: the accuracy table (rule x dataset x
architecture, mean ± sd over seeds, best per column marked), the criteria matrix, the
brain-similarity table and a run-status table; each rendered as Markdown, LaTeX, CSV, HTML.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

DATA_ORDER = ["digits", "mnist5k", "mnist", "fashion-mnist", "kmnist", "svhn", "cifar10", "cifar100"]
MODEL_ORDER = ["mlp", "cnn"]
DATA_NAMES = {"digits": "Digits", "mnist5k": "MNIST-5k", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
              "kmnist": "KMNIST", "svhn": "SVHN", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
MODEL_NAMES = {"mlp": "MLP", "cnn": "CNN"}
# settings that do not make two runs different experiments (beside the seed)
NON_IDENTITY = {"seed", "device", "eval_batch_size", "data_dir"}


def _order(values: Iterable[str], canon: list[str]) -> list[str]:
    vs = set(values)
    return [v for v in canon if v in vs] + sorted(vs - set(canon))


def rule_order(rules: Iterable[str]) -> list[str]:
    """Backprop first (the baseline), then the others alphabetically."""
    rs = set(rules)
    return (["bp"] if "bp" in rs else []) + sorted(rs - {"bp"})


SUBSET_SEP = ":"


def data_label(run: dict[str, Any]) -> str:
    """The dataset a run's figure belongs to: its name, and the number of training samples
    when it trained on a subset ('fashion-mnist:4500'). A run on 4,500 images and one on the
    full set are different experiments and never share a column or a mean."""
    data = str(run["data"])
    n = (run.get("config") or {}).get("train_subset")
    return f"{data}{SUBSET_SEP}{n}" if isinstance(n, int) and SUBSET_SEP not in data else data


def data_sort_key(label: str) -> tuple[int, str, bool, int]:
    """Datasets in DATA_ORDER, each full set before its subsets (larger first)."""
    base, _, n = label.partition(SUBSET_SEP)
    return (DATA_ORDER.index(base) if base in DATA_ORDER else len(DATA_ORDER), base, bool(n), -int(n or 0))


def column_name(data: str, model: str) -> str:
    base, _, n = data.partition(SUBSET_SEP)
    name = DATA_NAMES.get(base, base) + (f" ({int(n):,} train)" if n else "")
    return f"{name} {MODEL_NAMES.get(model, model)}"


def variant(run: dict[str, Any]) -> str:
    """The run's settings without the seed: runs of one variant are repeats of one experiment."""
    cfg = {k: v for k, v in (run.get("config") or {}).items() if k not in NON_IDENTITY}
    return json.dumps(cfg, sort_keys=True)


def choose_variants(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Keep one variant per (rule, model, data): a store may hold the same cell run with
    different settings (e.g. the quick and the paper sweep). Mean and sd are only meaningful
    over repeats of one experiment, so the variant with the most runs (then the most recent)
    is kept, and a note says so."""
    groups: dict[tuple, dict[str, list]] = {}
    for r in runs:
        groups.setdefault((r["rule"], r["model"], r["data"]), {}).setdefault(variant(r), []).append(r)
    kept, notes = [], []
    for (rule, model, data), vs in sorted(groups.items()):
        best = max(vs.values(), key=lambda rs: (len(rs), max(r.get("finished") or "" for r in rs)))
        kept.extend(best)
        if len(vs) > 1:
            notes.append(f"{rule} on {model}/{data}: {len(vs)} different settings in the store; "
                         f"the table uses the one with {len(best)} run(s) (select runs with --runs to choose)")
    return kept, notes


@dataclass
class Stat:
    values: list[float] = field(default_factory=list)
    n_diverged: int = 0
    n_failed: int = 0
    epochs: set[int] = field(default_factory=set)  # the runs' configured epochs

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        # sample standard deviation over seeds (n - 1); undefined for one seed
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class AccuracyTable:
    metric: str
    rules: list[str]
    columns: list[tuple[str, str]]  # (data, model)
    cells: dict[tuple[str, tuple[str, str]], Stat]
    best: set[tuple[str, tuple[str, str]]]

    def full_text(self, rule: str, col: tuple[str, str]) -> str:
        """`text` with the number of seeds averaged and the epochs: '98.12 ± 0.05 (n=3, 12 ep)'."""
        st = self.cells.get((rule, col))
        s = self.text(rule, col)
        if st is None or st.n == 0:
            return s
        eps = "/".join(str(e) for e in sorted(st.epochs)) or "?"
        return f"{s} (n={st.n}, {eps} ep)"

    def text(self, rule: str, col: tuple[str, str], pct: bool = True) -> str:
        st = self.cells.get((rule, col))
        if st is None:
            return "–"
        if st.n == 0:
            return "diverged" if st.n_diverged else "failed"
        k = 100.0 if pct else 1.0
        s = f"{st.mean * k:.2f}"
        if st.sd is not None:
            s += f" ± {st.sd * k:.2f}"
        bad = st.n_diverged + st.n_failed
        if bad:
            s += f" ({bad}/{st.n + bad} div./failed)"
        return s


def accuracy_table(runs: list[dict[str, Any]], metric: str = "test_acc") -> AccuracyTable:
    cells: dict[tuple[str, tuple[str, str]], Stat] = {}
    for r in runs:
        col = (r["data"], r["model"])
        st = cells.setdefault((r["rule"], col), Stat())
        if isinstance((r.get("config") or {}).get("epochs"), int):
            st.epochs.add(r["config"]["epochs"])
        if r["status"] == "done" and isinstance((r.get("metrics") or {}).get(metric), (int, float)) \
                and math.isfinite(r["metrics"][metric]):
            st.values.append(float(r["metrics"][metric]))
        elif r["status"] == "diverged":
            st.n_diverged += 1
        else:
            st.n_failed += 1
    datas = sorted({c[0] for _, c in cells}, key=data_sort_key)
    models = _order({c[1] for _, c in cells}, MODEL_ORDER)
    columns = [(d, m) for d in datas for m in models if any(c == (d, m) for _, c in cells)]
    rules = rule_order({r for r, _ in cells})
    best: set = set()
    for col in columns:
        # marked on the mean rounded as printed, so ties in the table are marked alike
        means = {r: round(cells[(r, col)].mean * 100, 2) for r in rules
                 if (r, col) in cells and cells[(r, col)].mean is not None}
        if means:
            top = max(means.values())
            best |= {(r, col) for r, m in means.items() if m == top}
            # and every rule a test over seeds cannot tell from the best: a bold cell is "not
            # shown worse than the best", never a winner the seeds do not support
            lead = [cells[(r, col)].values for r, m in means.items() if m == top][0]
            best |= {(r, col) for r in means if not_worse(cells[(r, col)].values, lead)}
    return AccuracyTable(metric, rules, columns, cells, best)


ALPHA = 0.05


def not_worse(values: list[float], lead: list[float]) -> bool:
    """Whether a Welch t test over seeds fails to tell `values` from the best cell's `lead`
    (two-sided, p >= ALPHA). With fewer than two seeds on either side there is no test: False."""
    if len(values) < 2 or len(lead) < 2:
        return False
    from scipy.stats import ttest_ind

    if statistics.pstdev(values) == 0 and statistics.pstdev(lead) == 0:
        return statistics.fmean(values) == statistics.fmean(lead)
    return bool(ttest_ind(values, lead, equal_var=False).pvalue >= ALPHA)


# -- renderers -----------------------------------------------------------------------------------
def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def html_table(header: list[str], rows: list[list[str]], bold: set[tuple[int, int]] = frozenset(),
               cls: str = "", caption: str = "") -> str:
    h = [f'<table class="{cls}">' if cls else "<table>"]
    if caption:
        h.append(f"<caption>{html.escape(caption)}</caption>")
    h.append("<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr></thead><tbody>")
    for i, row in enumerate(rows):
        tds = []
        for j, c in enumerate(row):
            txt = html.escape(str(c))
            tds.append(f'<td class="best"><strong>{txt}</strong></td>' if (i, j) in bold else f"<td>{txt}</td>")
        h.append("<tr>" + "".join(tds) + "</tr>")
    h.append("</tbody></table>")
    return "".join(h)


def reference() -> dict[str, Any]:
    """The reference paper's figures (report/reference.toml): {source, data: {model: {rule: %}}}."""
    import tomllib
    from importlib import resources

    return tomllib.loads((resources.files("bioplausible.report") / "reference.toml").read_text(encoding="utf-8"))


def accuracy_markdown(t: AccuracyTable, ref: dict[str, Any] | None = None) -> str:
    """Cells 'mean ± sd (n=seeds, epochs ep)'; after each column the reference paper has
    figures for (`ref`, as `reference()` returns), its figure and our mean's difference."""
    ref = reference() if ref is None else ref
    header, cols = ["rule"], []
    for c in t.columns:
        header.append(column_name(*c))
        theirs = ref.get(c[0], {}).get(c[1]) if isinstance(ref.get(c[0]), dict) else None
        cols.append((c, theirs))
        if theirs:
            header += ["paper", "Δ"]
    rows = []
    for r in t.rules:
        row = [r]
        for c, theirs in cols:
            row.append(f"**{t.full_text(r, c)}**" if (r, c) in t.best else t.full_text(r, c))
            if theirs:
                st = t.cells.get((r, c))
                p = theirs.get(r)
                row.append(f"{p:.2f}" if p is not None else "–")
                row.append(f"{st.mean * 100 - p:+.2f}".replace("-", "−")
                           if p is not None and st is not None and st.mean is not None else "–")
        rows.append(row)
    return markdown(header, rows)


def accuracy_latex(t: AccuracyTable) -> str:
    datas: list[tuple[str, int]] = []
    for d, _ in t.columns:
        if datas and datas[-1][0] == d:
            datas[-1] = (d, datas[-1][1] + 1)
        else:
            datas.append((d, 1))
    lines = [
        "% generated by `bioplausible report` from the results store; needs \\usepackage{booktabs}",
        r"\begin{tabular}{l" + "c" * len(t.columns) + "}",
        r"\toprule",
        " & ".join(["Rule"] + [rf"\multicolumn{{{n}}}{{c}}{{{tex_escape(DATA_NAMES.get(d, d))}}}" for d, n in datas]) + r" \\",
    ]
    start = 2
    rules_mid = []
    for d, n in datas:
        rules_mid.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules_mid))
    lines.append(" & ".join([""] + [tex_escape(MODEL_NAMES.get(m, m)) for _, m in t.columns]) + r" \\")
    lines.append(r"\midrule")
    for r in t.rules:
        cells = []
        for c in t.columns:
            s = tex_escape(t.text(r, c)).replace("±", r"$\pm$").replace("–", "--")
            cells.append(rf"\textbf{{{s}}}" if (r, c) in t.best else s)
        lines.append(" & ".join([tex_escape(r)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def accuracy_csv(t: AccuracyTable) -> str:
    header = ["rule", "data", "model", "metric", "n_seeds", "mean", "sd", "best", "n_diverged", "n_failed", "values"]
    rows = []
    for r in t.rules:
        for c in t.columns:
            st = t.cells.get((r, c))
            if st is None:
                continue
            rows.append([r, c[0], c[1], t.metric, st.n, "" if st.mean is None else repr(st.mean),
                         "" if st.sd is None else repr(st.sd), int((r, c) in t.best), st.n_diverged, st.n_failed,
                         " ".join(repr(v) for v in st.values)])
    return csv_text(header, rows)


def accuracy_html(t: AccuracyTable) -> str:
    header = ["rule"] + [column_name(*c) for c in t.columns]
    rows = [[r] + [t.text(r, c) for c in t.columns] for r in t.rules]
    bold = {(i, j + 1) for i, r in enumerate(t.rules) for j, c in enumerate(t.columns) if (r, c) in t.best}
    return html_table(header, rows, bold, cls="accuracy")


# -- generic tables (criteria matrix, brain results) ---------------------------------------------
def _cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if math.isfinite(v) else str(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def generic(rows: list[dict[str, Any]], columns: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    return columns, [[_cell_text(r.get(c)) for c in columns] for r in rows]


def network_text(runs: list[dict[str, Any]]) -> str:
    """The network(s) the runs trained, as recorded ('' for runs recorded before networks were)."""
    return "; ".join(sorted({(r.get("network") or {}).get("summary", "") for r in runs} - {""}))


def status_table(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Runs per (rule, model, data): done / diverged / failed, mean seconds per epoch."""
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["rule"], r["model"], r["data"]), []).append(r)
    header = ["rule", "model", "data", "runs", "done", "diverged", "failed", "s/epoch", "samples/s", "epochs",
              "network"]
    rows = []
    order = rule_order(k[0] for k in groups)
    for (rule, model, data) in sorted(groups, key=lambda k: (order.index(k[0]), k[1], k[2])):
        rs = groups[(rule, model, data)]
        done = [r for r in rs if r["status"] == "done"]
        et = [r["epoch_time"] for r in done if r.get("epoch_time")]
        sp = [r["samples_per_s"] for r in done if r.get("samples_per_s")]
        eps = sorted({str((r.get("config") or {}).get("epochs")) for r in rs})
        rows.append([rule, model, data, str(len(rs)), str(len(done)),
                     str(sum(r["status"] == "diverged" for r in rs)), str(sum(r["status"] == "failed" for r in rs)),
                     f"{statistics.fmean(et):.2f}" if et else "", f"{statistics.fmean(sp):.0f}" if sp else "",
                     ",".join(eps), network_text(rs)])
    return header, rows


# -- brain comparison results --------------------------------------------------------------------
def _num(v: Any, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def read_brain(store, run_ids: list[str] | None = None) -> dict[str, Any] | None:
    """The latest brain analysis in the store (tables `brain_summary`, `brain_ceiling` of
    `bioplausible.brain.store`, and `brain_rdms` written by `compare`):
    {columns, rows, targets: {target: {bars, ceiling}}, rdms, notes}; None when absent."""
    tables = set(store.tables())
    status = [r["message"] for r in store.query("SELECT message FROM brain_status")] if "brain_status" in tables else []
    if "brain_summary" not in tables:
        return {"status": status} if status else None
    summ = store.query("SELECT * FROM brain_summary ORDER BY recordings, method, distance, target, position")
    if not summ:
        return {"status": status} if status else None
    ceil = {(c["recordings"], c["target"], c["method"]): c for c in store.query("SELECT * FROM brain_ceiling")} \
        if "brain_ceiling" in tables else {}
    columns = ["target", "group", "kind", "n", "best layer", "similarity", "95% interval", "partial (pixels)",
               "vs untrained (FDR p)", "vs pixels (FDR p)", "noise ceiling", "fraction of ceiling"]
    rows, targets = [], {}
    for s in summ:
        tkey = f"{s['target']} ({s['recordings']}, {s['method']})"
        lo, hi = s.get("noise_lower"), s.get("noise_upper")
        rows.append({"target": s["target"], "group": s["grp"], "kind": s["kind"], "n": s["n_members"],
                     "best layer": s.get("best_layer") or "", "similarity": _num(s.get("score")),
                     "95% interval": f"[{_num(s.get('ci_low'))}, {_num(s.get('ci_high'))}]",
                     "partial (pixels)": _num(s.get("partial")),
                     "vs untrained (FDR p)": _vs(s.get("diff_untrained"), s.get("p_untrained")),
                     "vs pixels (FDR p)": _vs(s.get("diff_pixels"), s.get("p_pixels")),
                     "noise ceiling": f"[{_num(lo)}, {_num(hi)}]", "fraction of ceiling": _num(s.get("fraction"), 2)})
        t = targets.setdefault(tkey, {"bars": [], "ceiling": None, "description": ""})
        t["bars"].append({"label": s["grp"], "kind": s["kind"], "value": s.get("score"),
                          "lo": s.get("ci_low"), "hi": s.get("ci_high")})
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo) and math.isfinite(hi):
            t["ceiling"] = (lo, hi)
        c = ceil.get((s["recordings"], s["target"], s["method"]))
        if c:
            t["description"] = f"{c.get('description') or ''} ({c.get('n_subjects')} subject RDMs)"
    # the table as printed: one row per group, one column per target (long form in the CSV)
    tnames = list(dict.fromkeys(s["target"] for s in summ))
    groups: dict[str, dict[str, Any]] = {}
    for s in summ:
        g = groups.setdefault(s["grp"], {"group": s["grp"], "kind": s["kind"], "n": s["n_members"]})
        g[s["target"]] = (f"{_num(s.get('score'))} [{_num(s.get('ci_low'))}, {_num(s.get('ci_high'))}]"
                          + (f" partial {_num(s.get('partial'))}" if s["kind"] in ("trained", "untrained") else "")
                          + (" uninformative (flat RDM)" if s.get("uninformative") else ""))
        ceiling_cell = f"[{_num(s.get('noise_lower'))}, {_num(s.get('noise_upper'))}]"
        groups.setdefault("\0ceiling", {"group": "noise ceiling", "kind": "", "n": ""})[s["target"]] = ceiling_cell
    kind_order = {"trained": 0, "untrained": 1, "pixels": 2, "reference": 3}
    ceiling_row = groups.pop("\0ceiling")
    # backprop's groups first (the baseline), as in the accuracy table
    ordered = sorted(groups.values(), key=lambda g: (kind_order.get(g["kind"], 3),
                                                     g["group"].removeprefix("untrained ").split(" ")[0] != "bp",
                                                     g["group"]))
    pivot_columns = ["group", "kind", "n"] + tnames
    pivot_rows = [ceiling_row] + ordered
    meta = summ[0]
    first = [s for s in summ if s["target"] == meta["target"] and s["recordings"] == meta["recordings"]
             and s["method"] == meta["method"] and s["distance"] == meta["distance"]]
    n_runs = sum(int(s["n_members"]) for s in first if s["kind"] == "trained")
    trained_n = [int(s["n_members"]) for s in first if s["kind"] == "trained"]
    notes = [f"Latest brain analysis in the store: {meta['recordings']}, {meta['method']} between RDMs "
             f"({meta['distance']} distance), best layer chosen on one half of the stimuli and scored on the other, "
             f"95% intervals from the dual bootstrap (subjects and stimuli where a target has several subject RDMs, "
             f"else stimuli; {meta.get('n_boot')} resamples) and seed variance, created {meta['created']}, "
             f"{n_runs} trained run{'s' * (n_runs != 1)}, stimulus mapping {meta.get('stimuli') or 'raw'} (auto: "
             "each image's contrast to the common ground, bright on dark, for dark-ground training sets such as "
             "MNIST; as they are for colour sets). Groups: a rule on a model/dataset averaged over seeds; "
             "'untrained <rule> <model>' = the same architecture with random weights (the baseline to beat); "
             "'pixels <data>' = the RDM of exactly the input the networks see; 'reference' = the data's classic "
             "model RDMs. Cells: similarity [95% interval] and partial = Spearman partial correlation controlling "
             "for the pixel RDM; n = runs or seeds averaged. p values: t tests on the dual-bootstrap variance, "
             "FDR-corrected (Benjamini-Hochberg)."]
    if trained_n and max(trained_n) < 2:
        notes.append("One seed per rule: seed-to-seed variance of the networks is not included in the intervals "
                     "or tests.")
    rdms = []
    if "brain_rdms" in tables:
        for r in store.rdms():
            n = int(r["n"])
            m = [[0.0] * n for _ in range(n)]
            it = iter(r["vector"])
            for i in range(n):
                for j in range(i + 1, n):
                    m[i][j] = m[j][i] = next(it)
            rdms.append((r["label"], m))
    verdicts = [r["line"] for r in store.query("SELECT line FROM brain_verdicts WHERE recordings = ? AND method = ? "
                                                 "AND distance = ? ORDER BY position",
                                                 (meta["recordings"], meta["method"], meta["distance"]))] \
        if "brain_verdicts" in tables else []
    return {"columns": columns, "rows": rows, "pivot_columns": pivot_columns, "pivot_rows": pivot_rows,
            "targets": targets, "rdms": rdms, "notes": notes, "verdicts": verdicts, "status": status}


def _vs(diff: Any, p: Any) -> str:
    if not isinstance(diff, (int, float)) or not math.isfinite(diff):
        return "–"
    ps = "–" if not isinstance(p, (int, float)) or not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")
    return f"{diff:+.3f} (p {ps})"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!<>&~])")  # "|" is markdown()'s


def md_text(s: Any) -> str:
    """Text from file names, options or run labels, safe in Markdown: Markdown and HTML
    specials backslash-escaped, newlines folded."""
    return _MD_SPECIAL.sub(r"\\\1", str(s)).replace("\n", " ")


def latex(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return (tex_escape(s).replace("✓", r"\checkmark{}").replace("✗", r"$\times$").replace("◐", r"$\sim$")
                .replace("⚠", r"$^{!}$").replace("±", r"$\pm$").replace("–", "--"))

    lines = ["% generated by `bioplausible report` from the results store; needs \\usepackage{booktabs,amssymb}",
             r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)
