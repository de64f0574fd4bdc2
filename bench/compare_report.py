"""Rendering a :class:`bench.compare.Comparison` as markdown (pull-request comments) or JSON."""

from __future__ import annotations

import json
from typing import Any

from bench.compare_types import (BETTER, CORRECTION_TEXT, MIXED, NA, RULE_FD, RULE_INDEPENDENT, RULE_NONE,
                                 RULE_PER_SAMPLE, RULE_TEXT, SAME, TOL_TEXT, UNMEASURED, VERDICT_RULE, WORSE,
                                 AxisSummary, Comparison, _checkpoint)
from leaderboards import verdicts


def _md(text: Any) -> str:
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = " ".join(s.splitlines())
    for ch in "\\`*_[]|#~":
        s = s.replace(ch, "\\" + ch)
    return s


def _code(text: Any) -> str:
    """A markdown code span (no backslash escapes inside; ``|`` escaped for tables)."""
    s = " ".join(str(text).splitlines()).replace("`", "'").replace("|", "\\|")
    return f"`{s}`"


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _p(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


_ICON = {BETTER: "🟢 better", WORSE: "🔴 worse", SAME: "⚪ no significant change", NA: "— not compared"}
_AXIS_ICON = {BETTER: "🟢", WORSE: "🔴", MIXED: "🟠", SAME: "⚪", UNMEASURED: "—"}
_RULE_SHORT = {RULE_PER_SAMPLE: "paired (per prompt)", RULE_FD: "paired (FD features)",
               RULE_INDEPENDENT: "independent CIs", RULE_NONE: "none"}
_ARROW = {"higher": "↑", "lower": "↓", "target": "◎"}


def _axis_line(a: AxisSummary) -> str:
    return f"- {_AXIS_ICON[a.verdict]} {_md(a.text)}"


def to_markdown(c: Comparison) -> str:
    """The pull-request comment for a comparison."""
    def who(rec: dict) -> str:
        g = rec.get("generator", {})
        args = g.get("args") or {}
        a = ", ".join(f"{k}={v}" for k, v in sorted(args.items())) if isinstance(args, dict) else str(args)
        ck = _checkpoint(rec)
        return (f"{_code(rec.get('run_id'))} — {_md(g.get('name'))}" + (f" ({_md(a)})" if a else "")
                + (f", checkpoint sha256 {_code(ck[:12])}" if ck else "") + f", seed {_md(rec.get('seed'))}"
                + f", n = {_md(verdicts.n_of(rec))}")

    worse, better = c.regressions, [m for m in c.metrics if m.verdict == BETTER]
    head = (f"{len(worse)} regression{'s' if len(worse) != 1 else ''} "
            f"({', '.join(_code(m.key) for m in worse)})" if worse else "no regression")
    ref = c.head.get("reference") or {}
    lines = ["## BrainGenBench: checkpoint comparison", ""]
    if c.overridden:
        lines += ["> [!WARNING]",
                  "> **Not comparable — compared anyway because of `--force`.** Overridden: "
                  + "; ".join(f"**{_md(p)}**" for p in c.overridden) + ".",
                  "> The differences below mix the checkpoint change with these set-up differences; "
                  "they are not the checkpoint's effect.", ""]
    lines += [_axis_line(a) for a in c.axes]
    lines += [
        "",
        f"**Result:** {'🔴 ' if worse else '✅ '}{head}; {len(better)} better, "
        f"{sum(m.verdict == SAME for m in c.metrics)} without significant change "
        f"(Holm–Bonferroni across {c.family_size} metrics, family-wise α = {c.alpha:g}; "
        "|Δ| must also exceed the metric's tolerance).",
        "",
        f"- **base**: {who(c.base)}",
        f"- **head**: {who(c.head)}",
        f"- suite {_code(c.head['suite'].get('name'))} v{_md(c.head['suite'].get('version'))}, reference "
        f"{_code(ref.get('name'))} ({_md(str(ref.get('content_hash'))[:12])})"
        + (" — **SYNTHETIC** data" if ref.get("synthetic") else "")
        + f", n = {_md(c.head['suite'].get('n_prompts'))} prompts, "
        + ("same prompts in both runs (paired)" if c.paired else "different prompts (unpaired)"),
        "",
        "| metric | axis | dir | base | head | Δ (head − base) | 95% CI of Δ | p (Holm) | tolerance (source) "
        "| rule | verdict |",
        "|---|---|:-:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for m in c.metrics:
        arrow = _ARROW.get(m.direction or "", "")
        ci = "—" if m.ci_low is None else f"[{_num(m.ci_low, True)}, {_num(m.ci_high, True)}]"
        verdict_text = _ICON[m.verdict] + (f" ({_md(m.note)})" if m.note else "")
        base, headv = _num(m.base), _num(m.head)
        if m.direction == "target" and m.base_distance is not None:
            base += f" (to floor {_num(m.base_distance)})"
            headv += f" (to floor {_num(m.head_distance)})"
        p = "—" if m.p_value is None else f"{_p(m.p_value)} ({_p(m.p_holm)})"
        key = _code(m.key) + (" ★" if m.headline else "")
        lines.append(f"| {key} | {_md(m.axis or '—')} | {arrow} | {base} | {headv} | {_num(m.delta, True)} | {ci} | "
                     f"{p} | {m.tolerance:.3g} ({_md(m.tolerance_source)}) | {_RULE_SHORT[m.rule]} | {verdict_text} |")
    used = sorted({m.rule for m in c.metrics if m.verdict != NA})
    tol_used = sorted({m.tolerance_source for m in c.metrics})
    legend = ["★ headline metric of its axis."] if any(m.headline for m in c.metrics) else []
    if any(m.direction == "target" for m in c.metrics):
        legend.append("◎ target metric: closest to the real-vs-real floor is best; its Δ, CI, p and tolerance are "
                      "of |value − floor| (negative Δ = closer to real data).")
    if legend:
        lines += ["", " ".join(legend)]
    lines += ["", "<details><summary>How this is decided</summary>", "",
              f"- **Verdict**: {_md(VERDICT_RULE.format(alpha=c.alpha))}.",
              f"- **Correction**: {_md(CORRECTION_TEXT.format(alpha=c.alpha))}; here m = {c.family_size}. "
              "The p column shows the raw p and, in parentheses, the Holm-adjusted p (significant when ≤ α).",
              f"- **Tolerances**: {_md(c.tolerance_source)}."]
    lines += [f"  - {_md(s)}: {_md(TOL_TEXT[s])}." for s in tol_used]
    lines += [f"- **{_RULE_SHORT[r]}** (`{r}`): {_md(RULE_TEXT[r])}." for r in used]
    lines += [f"- Bootstrap: {c.n_boot} resamples, seed {c.seed}.", ""]
    if c.notes:
        lines += ["Notes:", ""] + [f"- {_md(n)}" for n in c.notes] + [""]
    lines += ["</details>", ""]
    return "\n".join(lines)


def to_json(c: Comparison) -> str:
    """The comparison as indented JSON."""
    return json.dumps(c.to_dict(), indent=2, ensure_ascii=False, default=str)
