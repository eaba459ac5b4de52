"""Smoke test of the benchmark suite: ``python -m bench retrieval archive --quick`` runs end to
end and writes JSON with the runner's fields. Speed is not checked here (the figures are the
benchmarks' output, never a test's assertion)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.procs import ROOT, process_env


def test_quick_bench_writes_json(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "retrieval", "archive", "--quick", "--json-out",
         str(tmp_path)], cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "summary" in done.stdout
    for name in ("retrieval", "archive"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["name"] == name
        assert data["params"]["quick"] is True
        assert data["rows"] and data["baseline"]
        assert isinstance(data["ratio"], float) and data["ratio"] > 0
        assert data["machine"]["cpus"] >= 1
        for t in data["targets"]:
            assert set(t) >= {"figure", "value", "op", "threshold", "met"}
            assert t["met"] in (True, False)
    retrieval = json.loads((tmp_path / "retrieval.json").read_text())
    assert [(r["mode"], r["vectors"], r["entries"]) for r in retrieval["rows"]] == [
        ("exact", "clustered", 10_000), ("exact", "clustered", 20_000),
        ("ivf", "clustered", 20_000), ("exact", "uniform", 20_000),
        ("ivf", "uniform", 20_000)]
    assert all(r["p95_ms"] > 0 and r["raw_faiss_p95_ms"] > 0 for r in retrieval["rows"])
    assert all(0 <= r["recall_at_10"] <= 1 for r in retrieval["rows"] if r["mode"] == "ivf")
    archive = json.loads((tmp_path / "archive.json").read_text())
    # COPY, multi-row INSERT (PostgreSQL only), Celery archiver
    postgres = archive["params"]["database"] == "postgresql"
    assert [r["written"] for r in archive["rows"]] == ([2000, 2000, 500] if postgres else [2000, 500])
    assert archive["baseline"]["written"] == 300  # one insert per turn


def test_real_model_layouts_default_to_this_machines_embedded_layout_first():
    from bench.real_model import default_layout, parse_layouts

    assert parse_layouts("shared") == ["shared"]
    assert parse_layouts("shared, split,shared") == ["shared", "split"]
    both = parse_layouts(None)
    assert both[0] == default_layout() and sorted(both) == ["shared", "split"]


def test_real_model_rejects_an_unknown_layout_before_starting_anything():
    done = subprocess.run([sys.executable, "-m", "bench", "real_model", "--layouts", "both"],
                          cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown layout(s) both" in done.stderr


def test_real_model_counts_prompt_reuse_from_the_model_server_log():
    from bench.real_model import prompt_cache_use

    log = ("Llama._create_completion: cache hit\n"
           "Llama.generate: 412 prefix-match hit, remaining 57 prompt tokens to eval\n"
           "Llama._create_completion: cache miss\n"
           "Llama.generate: 3 prefix-match hit, remaining 300 prompt tokens to eval\n")
    assert prompt_cache_use(log) == {"prefix_hits": 2, "tokens_reused": 415,
                                     "tokens_evaluated_after_hit": 357}
    assert prompt_cache_use("")["prefix_hits"] == 0
