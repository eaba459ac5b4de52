"""The memory-quality benchmark and its dataset: the shipped dataset loads and is answerable
from its evidence, the loader names bad fields, and ``python -m bench memory_quality`` runs end
to end on a tiny conversation and writes its JSON (fields, not figures)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evaluation.dataset import (
    DEFAULT_DATASET,
    DatasetError,
    answer_in_context,
    content_tokens,
    load_dataset,
    parse_dataset,
    replay_events,
)
from tests.procs import ROOT, process_env

TINY = [{
    "sample_id": "tiny-harbour",
    "conversation": {
        "speaker_a": "Wren", "speaker_b": "Bertil",
        "session_1_date_time": "7:15 pm on 4 April, 2025",
        "session_1": [
            {"speaker": "Wren", "dia_id": "D1:1",
             "text": "I left my lantern at the ferry house on Copper Lane."},
            {"speaker": "Bertil", "dia_id": "D1:2",
             "text": "Then fetch it before the ferry leaves at nine."},
            {"speaker": "Wren", "dia_id": "D1:3",
             "text": "My cousin Alva keeps the key to the ferry house."},
            {"speaker": "Bertil", "dia_id": "D1:4",
             "text": "Alva owes me three silver, tell her I said so."},
        ]},
    "qa": [
        {"question": "Where did Wren leave the lantern?", "answer": "the ferry house on Copper Lane",
         "evidence": ["D1:1"], "category": "single-hop"},
        {"question": "How much does Alva owe Bertil?", "answer": "three silver",
         "evidence": ["D1:4"], "category": "single-hop"},
    ]}]


def test_shipped_dataset_is_complete_and_answerable():
    convs = load_dataset(DEFAULT_DATASET)
    assert len(convs) >= 3
    assert all(len(c.sessions) >= 4 for c in convs)
    assert all(8 <= len(s.utterances) <= 14 for c in convs for s in c.sessions)
    assert sum(len(c.qa) for c in convs) >= 40
    cats = {q.category for c in convs for q in c.qa}
    assert {"single-hop", "multi-hop", "temporal", "knowledge-update"} <= cats
    for c in convs:
        utts = c.by_dia_id()
        for q in c.qa:
            assert all(e in utts for e in q.evidence), q
            ev = " ".join(utts[e].text for e in q.evidence)
            assert content_tokens(q.answer), q
            assert answer_in_context(q.answer, ev), q
        # every utterance is replayed exactly once, in order
        events = replay_events(c)
        assert [d for e in events for d in e.dia_ids] == [u.dia_id for u in c.utterances()]
        assert all(e.created_at > 0 for e in events)
        assert [e.created_at for e in events] == sorted(e.created_at for e in events)


def test_answer_rule():
    assert content_tokens("the Lantern Fish") == ["lantern", "fish"]
    assert content_tokens("D-3") == ["d3"]
    assert answer_in_context("Rosa's", "Dinner at Rosa's on Saturday?")
    assert answer_in_context("in May", "I'm moving to Harwick in May.")
    assert not answer_in_context("forty", "We're down to four tins.")
    assert not answer_in_context("anything", "")


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d[0]["conversation"]["session_1"][2].update(speaker="Nobody"),
     "[0].conversation.session_1[2].speaker"),
    (lambda d: d[0]["conversation"]["session_1"][1].update(dia_id="D2:2"),
     "[0].conversation.session_1[1].dia_id"),
    (lambda d: d[0]["conversation"]["session_1"][1].pop("text"),
     "[0].conversation.session_1[1].text"),
    (lambda d: d[0]["qa"][1].update(evidence=["D1:9"]), "[0].qa[1].evidence"),
    (lambda d: d[0]["qa"][0].pop("answer"), "[0].qa[0].answer"),
    (lambda d: d[0]["conversation"].update(session_1_date_time="someday"),
     "[0].conversation.session_1_date_time"),
    (lambda d: d[0]["conversation"].pop("speaker_b"), "[0].conversation.speaker_b"),
])
def test_loader_names_the_bad_field(mutate, where):
    data = json.loads(json.dumps(TINY))
    mutate(data)
    with pytest.raises(DatasetError) as exc:
        parse_dataset(data, "tiny.json")
    assert f"tiny.json: {where}" in str(exc.value)


def test_loader_reads_locomo_style_fields(tmp_path):
    data = json.loads(json.dumps(TINY))
    data[0]["conversation"]["session_1"][0]["img_url"] = ["x.jpg"]
    data[0]["qa"][1].update(answer=3, category=1)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    [conv] = load_dataset(path)
    assert conv.qa[1].answer == "3" and conv.qa[1].category == "1"
    events = replay_events(conv)
    assert [(e.speaker, e.listener, e.event_id) for e in events] == [
        ("Wren", "Bertil", "D1:1|D1:2"), ("Wren", "Bertil", "D1:3|D1:4")]
    with pytest.raises(DatasetError, match="not JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_dataset(tmp_path / "bad.json")


def test_benchmark_runs_on_a_tiny_dataset(tmp_path):
    """The benchmark on its own private stack (zero-latency model stand-in: the figures are
    the plumbing's, not a model's); checks the JSON's fields and the all-raw-turns context."""
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "memory_quality", "--dataset", str(data),
         "--backend", "zero", "--budget", "300", "--drain-timeout", "60",
         "--json-out", str(out)],
        check=False, cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "summary" in done.stdout
    res = json.loads((out / "memory_quality.json").read_text())
    assert res["name"] == "memory_quality"
    p = res["params"]
    assert p["budget_chars"] == 300 and p["k"] == 200 and p["backend"] == "zero"
    assert p["ingest"]["events"] == 2 and p["ingest"]["conversations"] == 1
    assert p["ingest"]["drained"] is True and p["ingest"]["drain_seconds"] is not None
    assert p["ingest"]["events_per_min"] > 0 and p["ingest"]["events_per_min_processed"] > 0
    assert isinstance(p["ingest"]["model_tokens"], int)
    assert set(p["entities"]) >= {"created", "precision", "duplicate_rate", "entities"}
    assert [r["category"] for r in res["rows"]] == ["single-hop", "overall"]
    overall = res["rows"][-1]
    assert overall["questions"] == 2
    assert overall["all_raw_turns"] == 1.0  # the raw conversation holds both answers
    assert 0.0 <= overall["baseline"] <= 1.0
    assert 0.0 <= overall["baseline_evidence_recall"] <= 1.0
    assert len(p["per_question"]) == 2
    for q in p["per_question"]:
        assert q["all_raw_turns"]["in_context"] is True
        assert set(q) >= {"question", "answer", "category", "evidence", "ours", "baseline",
                          "whole_memory", "all_raw_turns"}
        assert q["baseline"]["chars"] <= 300
        assert set(q["ours"]) >= {"in_context", "evidence_hit", "items", "chars", "dia_ids",
                                  "kinds"}
    assert {t["figure"] for t in res["targets"]} == {
        "answer in context: ours minus baseline",
        "answer in context: whole memory / all raw turns",
        "created-entity precision", "created-entity duplicate rate"}
    if not p["search_contract"]:
        pytest.skip("this dialogue server's /search has no evidence hits (kind, text): the "
                    "ours and whole-memory figures were not measured")
    assert overall["ours"] is not None and overall["whole_memory"] is not None
    assert overall["whole_memory"] == 1.0  # evidence is never lost
    for q in p["per_question"]:
        assert q["ours"]["chars"] <= 300
        assert q["ours"]["in_context"] in (True, False)


def test_evaluate_dataset_option_rejects_a_bad_dataset_by_field(tmp_path):
    from typer.testing import CliRunner

    from workers.cli import cli

    data = json.loads(json.dumps(TINY))
    data[0]["qa"][0]["evidence"] = ["D7:1"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    res = CliRunner().invoke(cli, ["evaluate", "--dataset", str(path), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "[0].qa[0].evidence" in res.output and "'D7:1'" in res.output


def test_scoring_pieces():
    from bench.memory_quality import entity_quality, item_dia_ids, name_shaped, pack

    assert pack(["aaaa", "bb", "cccc", "d"], 6, 200) == [0, 1]  # stops at the first misfit
    assert pack(["a", "b", "c"], 100, 2) == [0, 1]
    turn_dia = {"t1": ("D1:1", "D1:2"), "t2": ("D1:3",)}
    assert item_dia_ids({"kind": "evidence", "event_id": "D1:1|D1:2", "part": 1}, turn_dia) \
        == {"D1:2"}
    assert item_dia_ids({"kind": "evidence", "event_id": "D1:3", "part": 0}, turn_dia) == {"D1:3"}
    assert item_dia_ids({"kind": "evidence", "event_id": None, "part": 0}, turn_dia) == set()
    assert item_dia_ids({"kind": "document", "turn_ids": ["t1", "t2", "tx"]}, turn_dia) \
        == {"D1:1", "D1:2", "D1:3"}
    assert name_shaped("Crumb & Co.") and name_shaped("Captain Yara Holt")
    assert not name_shaped("The player asked about the road.  Then left")
    assert not name_shaped("a, b")
    q = entity_quality(
        [{"world_id": 1, "title": "Lantern Fish"}, {"world_id": 1, "title": "the lantern fish"},
         {"world_id": 1, "title": "Marta"}, {"world_id": 1, "title": "A new thing"}],
        {1: ["Marta", "Osric"]}, {1: "Her boat is the Lantern Fish, moored at the north pier."})
    assert q["created"] == 4 and q["precise"] == 2 and q["precision"] == 0.5
    assert [e["duplicate_of"] for e in q["entities"]] == [None, "Lantern Fish", "Marta", None]
    assert q["duplicate_rate"] == 0.5
    assert entity_quality([], {}, {})["precision"] is None
