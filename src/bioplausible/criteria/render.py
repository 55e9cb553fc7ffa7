"""The one renderer of the criteria matrix: plain text (the CLI), Markdown, LaTeX, HTML and
CSV, all with the same cells, legend, footnotes and probed configuration.

Rows are as `criteria.matrix.build_matrix` builds them (or as the results store gives them
back, possibly from an older version: unknown keys are shown, missing ones left out). Flat
rows ({rule, c1_...: verdict}) are shown as measured verdicts.
"""

from __future__ import annotations

import csv
import html
import io
from typing import Any

SYMBOL = {"yes": "✓", "no": "✗", "partial": "◐", None: "·"}
# where a verdict comes from -> its mark in a cell
MARK = {"measured": "m", "undecided": "u", "n/a": "n", "no probe": "c", "claimed": "c"}
PAPER_RATED = ("c1_no_weight_transport", "c2_local_error", "c3_single_phase")


def _columns(rows) -> dict[str, str]:
    from .matrix import COLUMNS

    cols: dict[str, str] = {}
    for key, label in COLUMNS.items():
        if any(key in r["cells"] for r in rows):
            cols[key] = label
    for r in rows:
        for key, c in r["cells"].items():
            cols.setdefault(key, c.get("criterion") or key)
    return cols


def _short(key: str) -> str:
    return "C" + key.split("_")[0][1:]  # c2a_no_downstream -> C2a


def normalise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if isinstance(r.get("cells"), dict):
            out.append(r)
            continue
        cells = {k: {"criterion": k, "claim": None, "measured": v, "source": "measured", "evidence": ""}
                 for k, v in r.items() if k[:1].lower() == "c" and k[1:2].isdigit()}
        out.append({"rule": r.get("rule"), "cells": cells, "flags": [], "error": r.get("error")})
    return out


def cell_verdict(cell: dict[str, Any]) -> str | None:
    """The verdict a cell stands for: measured where a probe decided, else the claim."""
    if not isinstance(cell, dict) or cell.get("source") == "error":
        return None
    v = cell.get("measured") if cell.get("source") == "measured" else cell.get("claim")
    return v if v in ("yes", "no", "partial") else None


def cell_text(cell: dict[str, Any] | None, key: str = "") -> str:
    if not isinstance(cell, dict):
        return ""
    if cell.get("source") == "error":
        return "error"
    s = f"{SYMBOL[cell_verdict(cell)]}{MARK.get(cell.get('source'), '?')}"
    if key in PAPER_RATED and cell.get("paper") in SYMBOL and cell.get("paper") is not None:
        s += f" p{SYMBOL[cell['paper']]}"
    if cell.get("flag"):
        s += " ⚠"
    return s


def legend(rows) -> list[str]:
    cols = _columns(rows)
    names = ", ".join(f"{_short(k)} {v.split(' ', 1)[1] if ' ' in v else v}" for k, v in cols.items())
    lines = [names + ".",
             "✓ satisfies, ✗ does not, ◐ partially, · no verdict. Mark after the symbol: m = measured by a probe "
             "on the rule's train_step; u = the probe ran but could not decide, the rule's claim is shown; n = the "
             "probe does not apply to this rule, claim shown; c = no probe exists for this criterion, claim shown. "
             "p✓/p✗ = the reference paper's verdict (C1-C3 only; none where the paper does not rate the rule). "
             "⚠ = a measured verdict contradicts the rule's own claim.",
             "C2a (no downstream dependence: the update of layer l does not change when the weights above l+1 "
             "change) is stricter than C2, the reference paper's 'local error representation' (each unit's update "
             "follows its own state and an error or target held at that unit), which is the paper's C2; C2 is "
             "measured only where C2a holds, and claimed elsewhere.",
             ]
    configs = sorted({r["configuration"] for r in rows if r.get("configuration")})
    lines += [c[:1].upper() + c[1:] + "." for c in configs]
    opts = [f"{r['rule']}: " + ", ".join(f"{k}={v}" for k, v in r["probe_options"].items())
            for r in rows if r.get("probe_options")]
    if opts:
        lines.append("Rules probed with options: " + "; ".join(opts) + ".")
    return lines


def footnotes(rows) -> list[str]:
    notes = []
    for r in rows:
        for f in r.get("flags") or []:
            notes.append(f"⚠ {r['rule']} {f}")
        if r.get("error"):
            notes.append(f"error {r['rule']}: {str(r['error']).splitlines()[0][:200]}")
    differ = [f"{r['rule']} {_short(k)} (paper {SYMBOL[c.get('paper')]}, measured {SYMBOL[c.get('measured')]})"
              for r in rows for k, c in r["cells"].items() if c.get("note")]
    if differ:
        notes.append("measured differently from the reference paper: " + "; ".join(differ) + ".")
    und = [f"{r['rule']} {_short(k)}: {c.get('evidence')}" for r in rows for k, c in r["cells"].items()
           if c.get("source") == "undecided"]
    if und:
        notes.append("undecided: " + "; ".join(und) + ".")
    return notes


def _table(rows) -> tuple[list[str], list[list[str]]]:
    cols = _columns(rows)
    header = ["rule", *(_short(k) for k in cols)]
    body = [[str(r["rule"]), *(cell_text(r["cells"].get(k), k) for k in cols)] for r in rows]
    return header, body


def render_text(rows) -> str:
    rows = normalise(rows)
    header, body = _table(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths]), *(line(b) for b in body)]
    notes = footnotes(rows)
    return "\n".join([*out, "", *legend(rows), *([""] + notes if notes else [])]) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(rows) -> str:
    rows = normalise(rows)
    header, body = _table(rows)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md(c) for c in b) + " |" for b in body]
    out += [""] + [_md(x) + "\n" for x in legend(rows)]
    notes = footnotes(rows)
    if notes:
        out += [f"- {_md(n)}" for n in notes]
    return "\n".join(out).rstrip("\n") + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return (s.replace("✓", r"\checkmark{}").replace("✗", r"$\times$").replace("◐", r"$\sim$")
            .replace("⚠", r"$^{!}$").replace("·", r"$\cdot$").replace("≥", r"$\geq$").replace("–", "--"))


def render_latex(rows) -> str:
    rows = normalise(rows)
    header, body = _table(rows)
    out = ["% generated by bioplausible; needs \\usepackage{booktabs,amssymb}",
           r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
           " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(_tex(c) for c in b) + r" \\" for b in body]
    out += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip{\footnotesize"]
    out += [_tex(x) + r"\par" for x in legend(rows) + footnotes(rows)]
    out += ["}"]
    return "\n".join(out) + "\n"


def render_html(rows) -> str:
    rows = normalise(rows)
    header, body = _table(rows)
    cols = list(_columns(rows))
    h = ['<table class="criteria">', "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header)
         + "</tr></thead><tbody>"]
    for r, b in zip(rows, body):
        tds = [f"<td>{html.escape(b[0])}</td>"]
        for k, text in zip(cols, b[1:]):
            c = r["cells"].get(k) or {}
            title = c.get("evidence") or ""
            if c.get("source") != "measured" and c.get("claim_reason"):
                title += f" (claim: {c['claim_reason']})"
            tds.append(f'<td title="{html.escape(str(title))}">{html.escape(text)}</td>')
        h.append("<tr>" + "".join(tds) + "</tr>")
    h.append("</tbody></table>")
    h += [f'<p class="legend">{html.escape(x)}</p>' for x in legend(rows)]
    notes = footnotes(rows)
    if notes:
        h.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(h) + "\n"


CSV_FIELDS = ["rule", "criterion", "key", "verdict", "source", "claim", "measured", "paper", "contradiction",
              "evidence", "claim_reason"]


def render_csv(rows) -> str:
    rows = normalise(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        for k, c in r["cells"].items():
            w.writerow({"rule": r["rule"], "criterion": c.get("criterion"), "key": k,
                        "verdict": "error" if c.get("source") == "error" else (cell_verdict(c) or ""),
                        "source": c.get("source"), "claim": c.get("claim"), "measured": c.get("measured"),
                        "paper": c.get("paper"), "contradiction": c.get("flag") or "",
                        "evidence": c.get("evidence") or "", "claim_reason": c.get("claim_reason") or ""})
    return buf.getvalue()


RENDERERS = {"table": render_text, "text": render_text, "markdown": render_markdown, "latex": render_latex,
             "html": render_html, "csv": render_csv}


def render(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(RENDERERS)}")
    return RENDERERS[fmt](rows)
