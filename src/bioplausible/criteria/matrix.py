"""The plausibility matrix: every rule x every criterion, claimed vs measured.

`build_matrix(rules=None)` runs the probes (`criteria.probes`) on each rule and joins them
with the rule's own claims and with the reference paper's table; `render(rows, fmt)` prints
it as a plain-text table, Markdown, LaTeX or CSV.

A cell shows the verdict (✓ yes, ✗ no, ◐ partial) and where it comes from: 'measured'
(a probe decided it), 'claimed' (no probe for this criterion or the probe does not apply;
the rule's own claim is shown) or 'error' (the rule failed to build or step). A cell is
flagged (⚠) when a probe contradicts the rule's claim. The reference paper's verdicts for
C1-C3 are shown alongside (and a measured verdict that differs from the paper is noted).
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any, Iterable

from .claims import CRITERIA
from .probes import ProbeResult, ProbeUnavailable, probe_rule, resolve_rule

# The reference paper's table: which of C1-C3 each rule family satisfies (others: not rated).
PAPER_TABLE: dict[str, set[str]] = {
    "bp": set(),
    "fa": {"c1"},
    "local": {"c2"},
    "pc": {"c2"},
    "perturbation": {"c1", "c2"},
    "dtp": {"c1", "c2"},
    "hebbian": {"c1", "c2", "c3"},
    "rstdp": {"c1", "c2", "c3"},
    "ff": {"c1", "c2", "c3"},
    "ep": {"c1", "c2", "c3"},
}
PAPER_RATED = ("c1_no_weight_transport", "c2_local_error", "c3_single_phase")
# registry names -> the paper's family
PAPER_ALIASES = {
    "backprop": "bp", "feedback_alignment": "fa", "wp": "perturbation", "np": "perturbation",
    "local_losses": "local", "localloss": "local", "ll": "local", "tp": "dtp", "softhebb": "hebbian",
    "krotov": "hebbian", "r-stdp": "rstdp", "r_stdp": "rstdp", "eqprop": "ep", "forward_forward": "ff",
}

SYMBOL = {"yes": "✓", "no": "✗", "partial": "◐", None: "?"}
SHORT = {k: k.split("_")[0].upper() for k in CRITERIA}  # c1_no_weight_transport -> C1


def paper_family(rule: str) -> str | None:
    fam = PAPER_ALIASES.get(rule, rule)
    return fam if fam in PAPER_TABLE else None


def paper_verdict(rule: str, criterion: str) -> str | None:
    fam = paper_family(rule)
    if fam is None or criterion not in PAPER_RATED:
        return None
    return "yes" if criterion.split("_")[0] in PAPER_TABLE[fam] else "no"


def _cell(criterion: str, claim, probe, rule: str) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "criterion": CRITERIA[criterion], "claim": claim.verdict if claim else None,
        "claim_reason": claim.reason if claim else "", "measured": None, "evidence": "",
        "source": "claimed", "paper": paper_verdict(rule, criterion), "flag": None, "note": None,
    }
    if isinstance(probe, ProbeResult) and probe.verdict is None:
        cell.update(evidence=f"not decidable: {probe.evidence}", data=probe.data)
    elif isinstance(probe, ProbeResult):
        cell.update(measured=probe.verdict, evidence=probe.evidence, source="measured", data=probe.data)
        if cell["claim"] is not None and cell["claim"] != probe.verdict:
            cell["flag"] = f"claims {cell['claim']}, probe measures {probe.verdict}: {probe.evidence}"
        if cell["paper"] is not None and cell["paper"] != probe.verdict:
            cell["note"] = f"reference paper: {cell['paper']}, measured: {probe.verdict}"
    elif isinstance(probe, ProbeUnavailable):
        cell["evidence"] = f"not measurable: {probe}"
    elif isinstance(probe, Exception):
        cell.update(source="error", evidence=f"{type(probe).__name__}: {probe}")
    elif probe is None:
        cell["evidence"] = "no probe for this criterion"
    return cell


def matrix_row(rule) -> dict[str, Any]:
    """One rule's row: claims, probe results and flags, never raising."""
    t0 = time.perf_counter()
    try:
        name, cls = resolve_rule(rule)
    except Exception as e:
        name = rule if isinstance(rule, str) else getattr(rule, "__name__", str(rule))
        return {"rule": name, "description": "", "error": f"{type(e).__name__}: {e}",
                "paper": None, "cells": {k: _cell(k, None, e, name) for k in CRITERIA}, "flags": [], "time_s": 0.0}
    claims = getattr(cls, "claims", None)
    probes = probe_rule(cls)
    cells = {}
    popts = getattr(cls, "probe_options", None) or {}
    if popts:  # say which configuration of the rule the probes measured
        suffix = " (probed with " + ", ".join(f"{k}={v}" for k, v in popts.items()) + ")"
        probes = {k: (ProbeResult(p.verdict, p.evidence + suffix, p.data) if isinstance(p, ProbeResult) else p)
                  for k, p in probes.items()}
    fatal = probes.get("_error")  # the rule failed to build or step: no cell is trustworthy
    for key in CRITERIA:
        claim = getattr(claims, key, None) if claims is not None else None
        cells[key] = _cell(key, claim, fatal if fatal is not None else probes.get(key), name)
    errors = {type(p).__name__ + ": " + str(p) for k, p in probes.items() if isinstance(p, Exception)
              and not isinstance(p, ProbeUnavailable)}
    fam = paper_family(name)
    return {
        "rule": name,
        "description": getattr(cls, "description", ""),
        "error": "; ".join(sorted(errors)) or None,
        "paper": (",".join(sorted(c.upper() for c in PAPER_TABLE[fam])) or "none") if fam else None,
        "cells": cells,
        "flags": [f"{SHORT[k]}: {c['flag']}" for k, c in cells.items() if c["flag"]],
        "probe_options": popts,
        "time_s": time.perf_counter() - t0,
    }


def build_matrix(rules: Iterable | None = None) -> list[dict[str, Any]]:
    """Rows for the given rules (registered names or Learner classes; default: all registered)."""
    from ..algorithms import RULES

    return [matrix_row(r) for r in (list(rules) if rules is not None else list(RULES))]


# -- rendering ------------------------------------------------------------------------------
def cell_text(cell: dict[str, Any], source_word: bool = True) -> str:
    if cell["source"] == "error":
        return "error"
    verdict = cell["measured"] if cell["source"] == "measured" else cell["claim"]
    s = SYMBOL[verdict]
    if source_word:
        s += " " + cell["source"]
    if cell["flag"]:
        s += " ⚠"
    return s


def _paper_text(row) -> str:
    return row["paper"] if row["paper"] is not None else "—"


def _headers() -> list[str]:
    return ["rule", *(SHORT[k] for k in CRITERIA), "paper"]


def _table_rows(rows) -> list[list[str]]:
    return [[r["rule"], *(cell_text(r["cells"][k]) for k in CRITERIA), _paper_text(r)] for r in rows]


def _footnotes(rows) -> list[str]:
    notes = []
    for r in rows:
        for f in r["flags"]:
            notes.append(f"⚠ {r['rule']} {f}")
        if r["error"]:
            notes.append(f"error {r['rule']}: {r['error'].splitlines()[0][:200]}")
    differ = [f"{r['rule']} {SHORT[k]} (paper {SYMBOL[c['paper']]}, measured {SYMBOL[c['measured']]})"
              for r in rows for k, c in r["cells"].items() if c.get("note")]
    if differ:
        notes.append("measured differently from the reference paper: " + "; ".join(differ))
    return notes


LEGEND = ("✓ satisfies, ✗ does not, ◐ partially; 'measured' = decided by a probe on the rule's train_step, "
          "'claimed' = the rule's own claim (no probe applies); ⚠ = a probe contradicts the claim; "
          "paper = criteria the reference paper credits the rule family with (C1-C3 only; — not in the paper).")


def render_text(rows) -> str:
    header, body = _headers(), _table_rows(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(header), line(["-" * w for w in widths]), *(line(b) for b in body)]
    notes = _footnotes(rows)
    names = ", ".join(f"{SHORT[k]} {v.split(' ', 1)[1]}" for k, v in CRITERIA.items())
    return "\n".join([*out, "", names, LEGEND, *([""] + notes if notes else [])]) + "\n"


def render_markdown(rows) -> str:
    header, body = _headers(), _table_rows(rows)
    header = ["rule", *(CRITERIA[k] for k in CRITERIA), "paper"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(b) + " |" for b in body]
    notes = _footnotes(rows)
    out += ["", LEGEND]
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


_LATEX_SYMBOL = {"yes": r"\checkmark", "no": r"$\times$", "partial": r"$\sim$", None: "?"}


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s


def render_latex(rows) -> str:
    cols = list(CRITERIA)
    out = [r"\begin{tabular}{l" + "c" * len(cols) + "l}", r"\hline",
           " & ".join(["rule", *(SHORT[k] for k in cols), "paper"]) + r" \\", r"\hline"]
    for r in rows:
        cells = []
        for k in cols:
            c = r["cells"][k]
            if c["source"] == "error":
                cells.append("err")
                continue
            v = c["measured"] if c["source"] == "measured" else c["claim"]
            t = _LATEX_SYMBOL[v] + ("$^m$" if c["source"] == "measured" else "$^c$")
            if c["flag"]:
                t += r"$^{!}$"
            cells.append(t)
        out.append(" & ".join([_latex_escape(r["rule"]), *cells, _latex_escape(_paper_text(r))]) + r" \\")
    out += [r"\hline", r"\end{tabular}",
            "% m = measured by a probe, c = claimed; ! = a probe contradicts the claim; "
            "paper = criteria credited by the reference paper"]
    return "\n".join(out) + "\n"


CSV_FIELDS = ["rule", "criterion", "key", "verdict", "source", "claim", "measured", "paper", "contradiction",
              "evidence", "claim_reason"]


def render_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        for k, c in r["cells"].items():
            verdict = "error" if c["source"] == "error" else (c["measured"] if c["source"] == "measured" else c["claim"])
            w.writerow({"rule": r["rule"], "criterion": c["criterion"], "key": k, "verdict": verdict,
                        "source": c["source"], "claim": c["claim"], "measured": c["measured"], "paper": c["paper"],
                        "contradiction": c["flag"] or "", "evidence": c["evidence"], "claim_reason": c["claim_reason"]})
    return buf.getvalue()


RENDERERS = {"table": render_text, "text": render_text, "markdown": render_markdown, "latex": render_latex,
             "csv": render_csv}


def render(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; known: table, markdown, latex, csv")
    return RENDERERS[fmt](rows)
