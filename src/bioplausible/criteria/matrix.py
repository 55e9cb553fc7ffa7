"""The plausibility matrix: every rule x every criterion, claimed vs measured.

`build_matrix(rules=None)` runs the probes (`criteria.probes`) on each rule and joins them
with the rule's own claims and with the reference paper's table; `criteria.render.render`
prints it (text, Markdown, LaTeX, HTML, CSV; the same legend and footnotes in each).

A cell's `source` says where its verdict comes from:
- 'measured': a probe decided it;
- 'undecided': the probe ran but could not decide (the rule's claim is shown);
- 'n/a': the probe does not apply to this rule (too shallow a network, no update, ...);
- 'no probe': no probe exists for this criterion (the claim is shown);
- 'error': the rule failed to build or step.
A cell is flagged when a measured verdict contradicts the rule's claim. The reference
paper's verdicts for C1-C3 are kept in each cell (`paper`), and differences are noted.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from .claims import CRITERIA
from .probes import ProbeResult, ProbeUnavailable, configuration, probe_rule, resolve_rule

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
# the paper's C2 is "local error representation" (our c2_local_error), not C2a
PAPER_RATED = ("c1_no_weight_transport", "c2_local_error", "c3_single_phase")
# registry names -> the paper's family
PAPER_ALIASES = {
    "backprop": "bp", "feedback_alignment": "fa", "wp": "perturbation", "np": "perturbation",
    "local_losses": "local", "localloss": "local", "ll": "local", "tp": "dtp", "softhebb": "hebbian",
    "krotov": "hebbian", "r-stdp": "rstdp", "r_stdp": "rstdp", "eqprop": "ep", "forward_forward": "ff",
}

# the matrix's columns: the claims' criteria plus C2a, a property that only a probe gives
COLUMNS: dict[str, str] = {
    "c1_no_weight_transport": CRITERIA["c1_no_weight_transport"],
    "c2a_no_downstream": "C2a no downstream dependence",
    "c2_local_error": "C2 local error representation",
    "c3_single_phase": CRITERIA["c3_single_phase"],
    "c4_spiking": CRITERIA["c4_spiking"],
    "c5_label_free_hidden": CRITERIA["c5_label_free_hidden"],
    "c6_unsigned_error": CRITERIA["c6_unsigned_error"],
}
SHORT = {k: "C" + k.split("_")[0][1:] for k in COLUMNS}  # c1_no_weight_transport -> C1, c2a_... -> C2a


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
        "criterion": COLUMNS[criterion], "claim": claim.verdict if claim else None,
        "claim_reason": claim.reason if claim else "", "measured": None, "evidence": "",
        "source": "no probe", "paper": paper_verdict(rule, criterion), "flag": None, "note": None,
    }
    if isinstance(probe, ProbeResult) and probe.verdict is None:
        cell.update(source="undecided", evidence=probe.evidence, data=probe.data)
    elif isinstance(probe, ProbeResult):
        cell.update(measured=probe.verdict, evidence=probe.evidence, source="measured", data=probe.data)
        if cell["claim"] is not None and cell["claim"] != probe.verdict:
            cell["flag"] = f"claims {cell['claim']}, measured {probe.verdict}: {probe.evidence}"
        if cell["paper"] is not None and cell["paper"] != probe.verdict:
            cell["note"] = f"reference paper: {cell['paper']}, measured: {probe.verdict}"
    elif isinstance(probe, ProbeUnavailable):
        cell.update(source="n/a", evidence=f"probe does not apply: {probe}")
    elif isinstance(probe, Exception):
        cell.update(source="error", evidence=f"{type(probe).__name__}: {probe}")
    else:
        cell["evidence"] = "no probe for this criterion"
    return cell


def _local_error_representation(c2a) -> ProbeResult | None:
    """C2 in the paper's sense: decided by measurement only where no information arrives
    from downstream at all (C2a 'yes'); otherwise there is no general probe."""
    if isinstance(c2a, ProbeResult) and c2a.verdict == "yes":
        return ProbeResult("yes", "measured through C2a: nothing from above l+1 reaches the updates, so whatever "
                                  "each unit's update follows is held at that unit", c2a.data)
    return None


def matrix_row(rule) -> dict[str, Any]:
    """One rule's row: claims, probe results and flags, never raising."""
    t0 = time.perf_counter()
    try:
        name, cls = resolve_rule(rule)
    except Exception as e:
        name = rule if isinstance(rule, str) else getattr(rule, "__name__", str(rule))
        return {"rule": name, "description": "", "error": f"{type(e).__name__}: {e}",
                "cells": {k: _cell(k, None, e, name) for k in COLUMNS}, "flags": [], "time_s": 0.0,
                "probe_options": {}}
    claims = getattr(cls, "claims", None)
    probes = probe_rule(cls)
    if "_error" not in probes:
        probes["c2_local_error"] = _local_error_representation(probes.get("c2a_no_downstream"))
    popts = getattr(cls, "probe_options", None) or {}
    fatal = probes.get("_error")  # the rule failed to build or step: no cell is trustworthy
    cells = {}
    for key in COLUMNS:
        claim = getattr(claims, key, None) if claims is not None else None
        cells[key] = _cell(key, claim, fatal if fatal is not None else probes.get(key), name)
    c2 = cells["c2_local_error"]
    if c2["source"] == "no probe":
        c2a = cells["c2a_no_downstream"]
        c2["evidence"] = ("no general probe: the paper's local error representation is measured only where C2a "
                          f"holds (C2a here: {c2a['measured'] or c2a['source']})")
    errors = {type(p).__name__ + ": " + str(p) for k, p in probes.items() if isinstance(p, Exception)
              and not isinstance(p, ProbeUnavailable)}
    return {
        "rule": name,
        "description": getattr(cls, "description", ""),
        "error": "; ".join(sorted(errors)) or None,
        "cells": cells,
        "flags": [f"{SHORT[k]}: {c['flag']}" for k, c in cells.items() if c["flag"]],
        "probe_options": popts,
        "configuration": configuration(),
        "time_s": time.perf_counter() - t0,
    }


def build_matrix(rules: Iterable | None = None) -> list[dict[str, Any]]:
    """Rows for the given rules (registered names or Learner classes; default: all registered)."""
    from ..algorithms import RULES

    return [matrix_row(r) for r in (list(rules) if rules is not None else list(RULES))]
