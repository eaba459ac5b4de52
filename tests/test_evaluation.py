"""The evaluation harness (evaluation/): gate logic on given numbers, the conversation script,
the measurements' arithmetic, report rendering, and one small end-to-end run of both scenarios
through ``npc-memory evaluate`` against a real dialogue server (uvicorn subprocess) on the real
llama.cpp model server, with the same model as judge."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from evaluation.gates import EvaluationResult, Gate, apply_gates, gates_from_settings
from evaluation.perf import latency_metrics, parse_rss_mb, percentile
from evaluation.report import render_markdown, write_reports
from evaluation.scenarios import VAMPIRE_PROBES, vampire_script
from settings import Settings

# --------------------------------------------------------------------------- gates


def test_min_and_max_gates_on_given_numbers():
    lore = Gate("lore accuracy", "quality", "lore_accuracy", "min", 0.9)
    assert lore.check(0.95).status == "pass" and lore.check(0.9).passed
    assert lore.check(0.89).status == "fail"
    assert lore.check(None).status == "no data" and not lore.check(None).passed
    p95 = Gate("p95 latency", "performance", "p95_latency_ms", "max", 250.0, "ms")
    assert p95.check(249.9).passed and p95.check(250.0).passed
    assert p95.check(250.1).status == "fail"


def test_gate_thresholds_come_from_settings():
    s = Settings(eval_min_lore_accuracy=0.5, eval_max_p95_latency_ms=1000, eval_max_memory_mb=64)
    gates = gates_from_settings(s)
    assert gates["lore_accuracy"].threshold == 0.5
    assert gates["p95_latency_ms"].threshold == 1000
    res = apply_gates({"lore_accuracy": 0.6, "p95_latency_ms": 1200.0, "peak_memory_mb": 63.0},
                      ["lore_accuracy", "p95_latency_ms", "peak_memory_mb", "throughput_rps"],
                      gates)
    assert [(g.metric, g.status) for g in res] == [
        ("lore_accuracy", "pass"), ("p95_latency_ms", "fail"), ("peak_memory_mb", "pass"),
        ("throughput_rps", "no data")]
    defaults = gates_from_settings(Settings())
    assert defaults["lore_accuracy"].threshold == 0.9  # target: >90% lore accuracy
    assert defaults["p95_latency_ms"].threshold == 250  # target: <250 ms p95


def test_result_passes_only_when_every_gate_passes():
    gates = gates_from_settings(Settings())
    ok = EvaluationResult("zombie-horde", "http://x", "t", 1.0, {}, {},
                          apply_gates({"error_rate": 0.0}, ["error_rate"], gates))
    assert ok.passed and ok.to_dict()["passed"] is True
    bad = EvaluationResult("zombie-horde", "http://x", "t", 1.0, {}, {},
                           apply_gates({"error_rate": 0.0}, ["error_rate", "throughput_rps"],
                                       gates))
    assert not bad.passed  # no data does not pass


# --------------------------------------------------------------------------- script, arithmetic


def test_vampire_script_repeats_its_probes():
    s3 = vampire_script(3)
    assert [p for _, p in s3] == [0, None, 0] and s3[0][0] == s3[2][0] == VAMPIRE_PROBES[0]
    s20 = vampire_script(20)
    assert len(s20) == 20
    assert [p for _, p in s20[:3]] == [0, 1, 2] and [p for _, p in s20[-3:]] == [0, 1, 2]
    assert vampire_script(2) == [(VAMPIRE_PROBES[0], 0)] * 2
    with pytest.raises(ValueError):
        vampire_script(1)


def test_latency_metrics_and_memory_parsing():
    m = latency_metrics([100.0, 200.0, 300.0, 400.0], errors=1, wall_s=2.0)
    assert m["requests"] == 5 and m["error_rate"] == pytest.approx(0.2)
    assert m["p50_latency_ms"] == pytest.approx(250.0)
    assert m["p95_latency_ms"] == pytest.approx(385.0)  # linear interpolation
    assert m["throughput_rps"] == pytest.approx(2.0)  # 4 successful / 2 s
    assert percentile([], 95) is None
    assert latency_metrics([], errors=0)["error_rate"] is None
    text = ("# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
            "# TYPE process_resident_memory_bytes gauge\n"
            "process_resident_memory_bytes 2.5165824e+08\n")
    assert parse_rss_mb(text) == pytest.approx(251.65824)
    assert parse_rss_mb("http_requests_total 3\n") is None


# --------------------------------------------------------------------------- report


def _result() -> EvaluationResult:
    gates = gates_from_settings(Settings())
    metrics = {"lore_accuracy": 0.5, "p95_latency_ms": 120.0}
    return EvaluationResult(
        scenario="vampire-long-conversation", server="http://dialogue:8000",
        started_at="2026-11-21T18:00:00+00:00", duration_s=12.5, params={"turns": 2},
        metrics=metrics, gates=apply_gates(metrics, ["lore_accuracy", "p95_latency_ms"], gates),
        records=[{"turn": 1, "player_text": "Who are you?", "npc_text": "A | pale lord"},
                 {"turn": 2, "player_text": "Why?", "error": "HTTP 503"}],
        notes=["NPC Lord Casimir Varga"])


def test_markdown_report_lists_gates_metrics_and_records():
    md = render_markdown([_result()])
    assert "Overall: **FAIL**" in md
    assert "## vampire-long-conversation: FAIL" in md
    assert "| lore accuracy | quality | 0.500 | >= 0.900 | fail |" in md
    assert "| p95 latency | performance | 120.0 ms | <= 250.0 ms | pass |" in md
    assert "| lore_accuracy | 0.500 |" in md
    assert "| turn | player_text | npc_text | error |" in md
    assert "A \\| pale lord" in md  # cells escaped
    assert "- NPC Lord Casimir Varga" in md


def test_write_reports(tmp_path):
    json_path, md_path = write_reports([_result()], tmp_path / "out")
    body = json.loads(json_path.read_text())
    assert body["passed"] is False
    (r,) = body["results"]
    assert r["scenario"] == "vampire-long-conversation" and len(r["records"]) == 2
    assert [g["status"] for g in r["gates"]] == ["fail", "pass"]
    assert md_path.read_text().startswith("# Evaluation report")


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def saltmere(database):
    """The bundled example world (Lord Casimir Varga, a vampire) imported with its vectors."""
    from inference.embedding import get_embedder
    from memory.db import session_scope
    from memory.importers.examples import example_paths
    from memory.importers.spec import load_world_json
    from memory.nearline import get_redis
    from memory.vectors import embed_world_base
    from memory.worlds import import_world

    spec = load_world_json(example_paths()[0])
    with session_scope() as s:
        world, _ = import_world(s, spec)
        embed_world_base(s, get_redis(), get_embedder(), world.id)
    return spec.key


@pytest.fixture(scope="module")
def served_world(saltmere):
    """conftest's ``dialogue_server`` serves Saltmere in this module."""
    return saltmere


def test_evaluate_both_scenarios_end_to_end(dialogue_server, saltmere, tmp_path):
    from workers.cli import cli

    api_key = os.environ["API_KEYS"].split(",")[0]  # tests/conftest.py's key
    res = CliRunner().invoke(cli, [
        "evaluate", "--scenario", "all", "--server", dialogue_server, "--api-key", api_key,
        "--out", str(tmp_path), "--world", saltmere, "--turns", "2", "--concurrency", "4",
        "--timeout", "120"])
    assert res.exit_code in (0, 1), res.output  # 1: a gate failed (SmolLM2 on 2 CPU cores)
    body = json.loads((tmp_path / "results.json").read_text())
    vamp, horde = body["results"]
    assert (vamp["scenario"], horde["scenario"]) == ("vampire-long-conversation", "zombie-horde")
    assert res.exit_code == (0 if body["passed"] else 1)
    assert (tmp_path / "report.md").read_text().count("## ") == 2

    # the conversation: 2 turns answered, the probe asked again at turn 2 (sizes kept tiny:
    # llama.cpp answers one request at a time, a few seconds each on a loaded 2-core machine)
    assert [r["turn"] for r in vamp["records"]] == [1, 2]
    assert all(r.get("npc_text") for r in vamp["records"]), vamp["records"]
    m = vamp["metrics"]
    assert m["requests"] == 2 and m["errors"] == 0 and m["error_rate"] == 0
    assert 0 < m["p50_latency_ms"] <= m["p95_latency_ms"]
    assert m["peak_memory_mb"] > 10  # the server's /metrics
    assert 0 <= m["judged_replies"] <= 2 and 0 <= m["judged_pairs"] <= 1
    for key in ("lore_accuracy", "sentiment_fit", "consistency"):
        assert m[key] is None or 0 <= m[key] <= 1
    judged = [r for r in vamp["records"] if "lore" in r]
    assert len(judged) == m["judged_replies"]
    assert all(r["lore"] in ("consistent", "contradicts") for r in judged)
    if m["judged_pairs"]:
        assert vamp["records"][1]["agrees_with_turn"] == 1
    gates = {g["metric"]: g for g in vamp["gates"]}
    assert set(gates) == {"lore_accuracy", "consistency", "sentiment_fit", "p95_latency_ms",
                          "error_rate", "peak_memory_mb"}
    assert gates["error_rate"]["status"] == "pass"

    # the horde: 4 simultaneous requests, each on its own session, all answered
    h = horde["metrics"]
    assert h["requests"] == 4 and h["errors"] == 0
    assert len({r["session_id"] for r in horde["records"]}) == 4
    assert all(r["status"] == 200 for r in horde["records"])
    assert h["throughput_rps"] > 0 and 0 < h["p50_latency_ms"] <= h["p95_latency_ms"]
    assert h["peak_memory_mb"] > 10
    assert any("no zombie NPC" in n for n in horde["notes"])  # Saltmere has none
    print(f"\nvampire (2 turns): p50 {m['p50_latency_ms']:.0f} ms, "
          f"p95 {m['p95_latency_ms']:.0f} ms,"
          f" lore {m['lore_accuracy']}, consistency {m['consistency']}, sentiment "
          f"{m['sentiment_fit']}; horde (4): p50 {h['p50_latency_ms']:.0f} ms, p95 "
          f"{h['p95_latency_ms']:.0f} ms, {h['throughput_rps']:.2f} req/s, server "
          f"{h['peak_memory_mb']:.0f} MB")


def test_evaluate_exits_2_when_the_server_is_unreachable(tmp_path):
    from workers.cli import cli
    from workers.embedded import free_port

    res = CliRunner().invoke(cli, ["evaluate", "--scenario", "vampire-long-conversation",
                                   "--server", f"http://127.0.0.1:{free_port()}",
                                   "--out", str(tmp_path), "--turns", "2", "--timeout", "5"])
    assert res.exit_code == 2
    assert "could not set up the conversation" in res.output
    assert not (tmp_path / "results.json").exists()
    res = CliRunner().invoke(cli, ["evaluate", "--scenario", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown scenario" in res.output
