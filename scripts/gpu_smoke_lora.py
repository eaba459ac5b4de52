"""GPU smoke test of the archetype adapters against a real ``vllm serve --enable-lora``.

The test suite runs the same flow against ``tests/fakes.FakeVllm`` (no GPU here); this script
is for a machine with a GPU and ``pip install '.[gpu]'`` (vLLM), plus ``peft`` and ``torch``
when it should build its own adapters. It:

1. builds tiny PEFT LoRA adapters (rank 8 on ``q_proj``/``v_proj``) of ``--base-model`` for two
   archetypes and three tasks (``smoke_vampire``, ``smoke_zombie`` x ``dialogue_style``,
   ``action_policy``, ``personality``), unless ``--adapters DIR`` gives a folder of
   ``<archetype>/<task>/adapter_config.json``;
2. starts ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 vllm serve <base> --enable-lora --max-loras 2
   --max-cpu-loras 4`` (or uses ``--server URL``, which must run with those settings);
3. migrates ``DATABASE_URL`` (default a temporary SQLite file), provisions the adapters
   (base model checked) and checks that one with another base model is refused;
4. routes a dialogue call of an NPC of each archetype through its ``dialogue_style`` adapter
   and checks that vLLM lists the adapter in ``GET /v1/models`` and answered as it;
5. with ``LORA_MAX_LOADED_ADAPTERS=--cap`` (default 2) uses more adapters than the cap and
   checks that the least recently used one was unloaded from vLLM;
6. registers a copy of an adapter, deletes the copy, and checks the 404 marks it broken and the call
   falls back to the base model.

Usage::

    python scripts/gpu_smoke_lora.py --base-model Qwen/Qwen2.5-0.5B-Instruct
    python scripts/gpu_smoke_lora.py --server http://gpu-host:8000/v1 --adapters /srv/adapters \\
        --base-model meta-llama/Llama-3.1-8B-Instruct

``REDIS_URL`` defaults to ``redis://127.0.0.1:6379/14`` (its ``lora:*`` keys are deleted at
the start). Prints one JSON report; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHETYPES = ("smoke_vampire", "smoke_zombie")
TASKS = ("dialogue_style", "action_policy", "personality")


def build_adapters(base_model: str, root: Path) -> None:
    """Save untrained rank-8 LoRA adapters of ``base_model`` under ``root`` (peft + torch)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, torch_dtype=torch.float16)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM", init_lora_weights="gaussian")
    peft_model = get_peft_model(model, config)
    for archetype in ARCHETYPES:
        for task in TASKS:
            out = root / archetype / task
            peft_model.save_pretrained(str(out))
            (out / "adapter_meta.json").write_text(json.dumps(
                {"version": "1", "trained_on": "untrained (smoke test)", "metrics": {}}))


def start_vllm(base_model: str, port: int, log_path: Path) -> subprocess.Popen:
    """``vllm serve`` with runtime LoRA updating, as in the Procfile's GPU line."""
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    argv = ["vllm", "serve", base_model, "--port", str(port), "--enable-lora",
            "--max-loras", "2", "--max-lora-rank", "16", "--max-cpu-loras", "4",
            "--max-model-len", "2048", "--gpu-memory-utilization", "0.6"]
    return subprocess.Popen(argv, env=env, stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def served_models(server: str) -> list[str]:
    import httpx

    return [m["id"] for m in httpx.get(f"{server}/models", timeout=30).json()["data"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="Qwen/Qwen2.5-0.5B-Instruct")
    ap.add_argument("--adapters", type=Path, help="folder of <archetype>/<task> PEFT adapters")
    ap.add_argument("--server", help="a running vLLM (.../v1); default: start one")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--cap", type=int, default=2, help="LORA_MAX_LOADED_ADAPTERS")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-lora-"))
    adapters = args.adapters or work / "adapters"
    if args.adapters is None:
        build_adapters(args.base_model, adapters)
    server = args.server or f"http://127.0.0.1:{args.port}/v1"
    os.environ.update({
        "GENERATION_BACKEND": "vllm", "GENERATION_BASE_URL": server,
        "GENERATION_MODEL": args.base_model, "LORA_MAX_LOADED_ADAPTERS": str(args.cap),
        "DATA_DIR": str(work)})
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{work / 'smoke.db'}")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")

    from workers.embedded import wait_http

    proc = None
    if args.server is None:
        proc = start_vllm(args.base_model, args.port, work / "vllm.log")
    checks: dict[str, bool] = {}
    report: dict = {"server": server, "base_model": args.base_model, "checks": checks}
    try:
        wait_http(f"{server}/models", 900)
        from inference import calls
        from inference.lora import registry, routing
        from inference.lora.coordinator import get_coordinator
        from memory import keys as rkeys
        from memory.db import migrate, session_scope
        from memory.nearline import get_redis

        r = get_redis()
        for key in r.scan_iter(rkeys.LORA_ALL):
            r.delete(key)
        migrate()
        names = sorted(p.name for p in adapters.iterdir() if p.is_dir())
        with session_scope() as s:
            chains = registry.provision_root(s, r, adapters, server_url=server)
        checks["provisioned"] = [c["name"] for c in chains] == names

        wrong = work / "wrong" / "smoke_wrong" / "personality"
        shutil.copytree(next(adapters.glob("*/personality")), wrong)
        cfg = json.loads((wrong / "adapter_config.json").read_text())
        (wrong / "adapter_config.json").write_text(json.dumps(
            {**cfg, "base_model_name_or_path": "someone/other-model"}))
        try:
            with session_scope() as s:
                registry.provision(s, r, work / "wrong", "smoke_wrong", server_url=server)
            checks["base_model_mismatch_refused"] = False
        except registry.ProvisionError as exc:
            checks["base_model_mismatch_refused"] = "someone/other-model" in str(exc)

        npc = {"title": "Count V", "content": "An old vampire of the crypt."}
        timings = {}
        for archetype in names:
            t0 = time.perf_counter()
            route = routing.resolve(r, "dialogue", archetype=archetype)
            timings[f"route_first_{archetype}_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            reply = calls.generate_reply(npc, "", [], [], "Good evening.", route=route)
            checks[f"dialogue_{archetype}"] = (route.adapter is not None
                                              and reply.model == route.adapter
                                              and route.adapter in served_models(server))
            t0 = time.perf_counter()
            routing.resolve(r, "dialogue", archetype=archetype)
            timings[f"route_loaded_{archetype}_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        report["timings"] = timings

        used = [routing.resolve(r, p, archetype=names[0]).adapter
                for p in ("dialogue", "simulation")]
        loaded = get_coordinator(r).loaded(server)
        on_server = served_models(server)
        checks["lru_cap_respected"] = len(loaded) <= args.cap and all(u in loaded for u in used)
        checks["lru_unloaded_on_server"] = all(
            (a in on_server) == (a in loaded)
            for c in chains for a in (x["name"] for x in c["adapters"].values()))

        gone = work / "broken" / "smoke_broken" / "personality"  # a copy: never the user's
        shutil.copytree(next(adapters.glob("*/personality")), gone)
        with session_scope() as s:
            registry.provision(s, r, work / "broken", "smoke_broken", server_url=server)
        shutil.rmtree(gone)
        os.environ["LORA_PURPOSE_TASKS"] = json.dumps({"dialogue": "personality"})
        from settings import get_settings

        get_settings.cache_clear()
        route = routing.resolve(r, "dialogue", archetype="smoke_broken")
        checks["missing_adapter_falls_back"] = route.adapter is None and "broken" in route.reason
        report["loaded"] = get_coordinator(r).loaded(server)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    report["ok"] = all(checks.values())
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
