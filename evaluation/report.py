"""Evaluation reports: ``results.json`` (every result with its records) and ``report.md``
(gates and metrics per scenario, the first records as a sample)."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.gates import EvaluationResult

SAMPLE_RECORDS = 12


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: list[EvaluationResult]) -> str:
    """The Markdown report of ``results``: a summary line per scenario, then per scenario its
    gate table (gate, kind, value, threshold, status), its metrics and a sample of records."""
    lines = ["# Evaluation report", ""]
    overall = all(r.passed for r in results)
    lines.append(f"Overall: **{'PASS' if overall else 'FAIL'}** ({len(results)} scenario(s))")
    lines.append("")
    for r in results:
        lines += [f"## {r.scenario}: {'PASS' if r.passed else 'FAIL'}", "",
                  f"Server {r.server}, started {r.started_at}, {r.duration_s:.1f} s; "
                  f"parameters: `{json.dumps(r.params)}`", ""]
        lines += [f"- {n}" for n in r.notes]
        if r.notes:
            lines.append("")
        lines += ["| gate | kind | value | threshold | status |", "|---|---|---|---|---|"]
        for g in r.gates:
            cmp = ">=" if g.op == "min" else "<="
            unit = f" {g.unit}" if g.unit else ""
            value = _fmt(g.value) + (unit if g.value is not None else "")
            lines.append(f"| {g.name} | {g.kind} | {value} | {cmp} {_fmt(g.threshold)}{unit} "
                         f"| {g.status} |")
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in r.metrics.items()]
        if r.records:
            keys = [k for k in r.records[0] if k not in ("session_id",)]
            extra = sorted({k for rec in r.records for k in rec} - set(keys) - {"session_id"})
            keys += extra
            lines += ["", f"Records (first {min(SAMPLE_RECORDS, len(r.records))} of "
                          f"{len(r.records)}):", "",
                      "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for rec in r.records[:SAMPLE_RECORDS]:
                lines.append("| " + " | ".join(_cell(_fmt(rec.get(k))) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def write_reports(results: list[EvaluationResult], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.md`` into ``out_dir`` (created if missing).

    Returns:
        ``(json_path, markdown_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "report.md"
    body = {"passed": all(r.passed for r in results), "results": [r.to_dict() for r in results]}
    json_path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(results) + "\n", encoding="utf-8")
    return json_path, md_path
