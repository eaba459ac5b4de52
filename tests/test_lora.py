"""Archetype LoRA adapters (``inference.lora``) against a local stand-in for vLLM.

vLLM needs a GPU, so ``tests/fakes.FakeVllm`` speaks its runtime LoRA endpoints and error
bodies over real HTTP; the registry, coordinator and router run for real on the test
database and Redis. ``scripts/gpu_smoke_lora.py`` runs the same flow against a real
``vllm serve --enable-lora`` where a GPU exists.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import settings
from fakes import FakeVllm  # tests/ is on sys.path (rootdir conftest, no __init__.py)
from contract.send import celery_sender
from inference import calls, llm
from inference.lora import coordinator as coord_mod
from inference.lora import registry, routing
from memory import keys as rkeys
from memory import nearline
from memory.db import session_scope
from memory.importers.spec import world_from_dict
from memory.worlds import import_world
from models import Adapter, Archetype, LoreEntry
from models.archetypes import ADAPTER_TASKS
from tests.broker import consumers_paused
from tests.sqlcount import sql_statements
from tests.procs import api_headers

BASE = "base-model"


def make_adapters(root: Path, archetype: str, tasks=ADAPTER_TASKS, base: str = BASE,
                  rank: int = 8, meta: dict | None = None) -> Path:
    """PEFT-shaped adapter folders ``root/archetype/<task>/`` (config + a weights file)."""
    for task in tasks:
        d = root / archetype / task
        d.mkdir(parents=True, exist_ok=True)
        (d / "adapter_config.json").write_text(json.dumps({
            "base_model_name_or_path": base, "peft_type": "LORA", "r": rank,
            "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
            "task_type": "CAUSAL_LM"}))
        (d / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
        if meta is not None:
            (d / "adapter_meta.json").write_text(json.dumps(meta))
    return root


def _name() -> str:
    return f"vamp{uuid.uuid4().hex[:8]}"


@pytest.fixture
def r():
    return nearline.get_redis()


@pytest.fixture
def configure():
    """``configure(VAR=value, ...)``: set the environment, re-read the settings and drop the
    process-wide clients; all restored after the test."""
    mp = pytest.MonkeyPatch()

    def reset():
        settings.get_settings.cache_clear()
        llm.chat_model.cache_clear()
        llm.routed_chat_model.cache_clear()
        coord_mod._coordinators.clear()

    def apply(**env):
        for key, value in env.items():
            mp.setenv(key, str(value))
        reset()

    try:
        yield apply
    finally:
        mp.undo()
        reset()


@pytest.fixture
def vllm(configure):
    """A fake vLLM serving BASE, configured as the backend of every role."""
    with FakeVllm(BASE) as fake:
        configure(**{f"{role}_{k}": v for role in ("GENERATION", "ANALYSIS", "MAINTENANCE")
                     for k, v in (("BACKEND", "vllm"), ("BASE_URL", fake.url),
                                  ("MODEL", BASE))}, LORA_LOAD_ATTEMPTS=3)
        yield fake


@pytest.fixture(scope="module")
def world():
    """A small world of two characters and a place (no embedding needed)."""
    key = f"lora-world-{uuid.uuid4().hex[:8]}"
    spec = world_from_dict({
        "format": "npc-memory.world", "version": 1, "key": key, "title": "Crypt Town",
        "description": "", "source": "test",
        "entries": [
            {"key": "count_v", "entity_type": "character", "title": "Count V",
             "content": "An old vampire.", "tags": [], "archetype": "Vampire"},
            {"key": "miller", "entity_type": "character", "title": "The Miller",
             "content": "A miller.", "tags": []},
            {"key": "crypt", "entity_type": "location", "title": "The Crypt",
             "content": "Cold stone.", "tags": []},
        ]})
    with session_scope() as s:
        w, _ = import_world(s, spec)
        entries = {e.key: e for e in s.scalars(select(LoreEntry).where(LoreEntry.world_id == w.id))}
        nearline.cache_entries(nearline.get_redis(), w.id, entries.values())
        return {"key": key, "id": w.id,
                "npcs": {k: nearline.entry_doc(e) for k, e in entries.items()}}


def provision(r, tmp_path: Path, name: str, server_url: str, base_model: str | None = None,
              **kw) -> dict:
    """Adapters for ``name`` provisioned on ``server_url`` (base model: the served one)."""
    make_adapters(tmp_path, name, **kw)
    with session_scope() as s:
        return registry.provision(s, r, tmp_path, name, server_url=server_url,
                                  base_model=base_model)


def npc_with(r, world, key: str, archetype: str | None) -> dict:
    with session_scope() as s:
        registry.set_character_archetype(s, r, world["key"], key, archetype)
    return world["npcs"][key]


# ------------------------------------------------------------------ registry

def test_provision_registers_the_chain_in_the_database_and_redis(r, tmp_path):
    name = _name()
    make_adapters(tmp_path, name, meta={"version": "3", "trained_on": "Dracula dialogue",
                                        "metrics": {"lore_accuracy": 0.93},
                                        "mistral_model": "ft:open-mistral-7b:abc"})
    with session_scope() as s:
        chain = registry.provision(s, r, tmp_path, name, server_url="http://gpu-1:8000/v1",
                                   server_id="g5-2xlarge-001", base_model=BASE,
                                   voice_service_url="http://voice:8080/v")
    with session_scope() as s:
        row = s.scalars(select(Archetype).where(Archetype.name == name)).one()
        adapters = s.scalars(select(Adapter).where(Adapter.archetype_id == row.id)).all()
    assert row.server_url == "http://gpu-1:8000/v1" and row.voice_service_url == "http://voice:8080/v"
    assert sorted(a.task for a in adapters) == sorted(ADAPTER_TASKS)
    a = next(a for a in adapters if a.task == "dialogue_style")
    assert (a.rank, a.base_model, a.version, a.trained_on) == (8, BASE, "3", "Dracula dialogue")
    assert a.metrics == {"lore_accuracy": 0.93} and a.mistral_model == "ft:open-mistral-7b:abc"
    assert a.size_mb > 0 and a.path == str((tmp_path / name / "dialogue_style").resolve())
    assert a.name == f"{name}-dialogue_style-v3"
    assert registry.get_chain(r, name) == chain
    assert chain["services"]["voice"] == "http://voice:8080/v"
    found = registry.adapter_for(r, name, "action_policy")
    assert found["name"] == f"{name}-action_policy-v3"
    assert found["server_url"] == "http://gpu-1:8000/v1"


def test_provision_rejects_a_base_model_mismatch_and_registers_nothing(r, tmp_path):
    name = _name()
    make_adapters(tmp_path, name, tasks=["personality"])
    make_adapters(tmp_path, name, tasks=["dialogue_style"], base="other/llama-3-8b")
    with pytest.raises(registry.ProvisionError) as err, session_scope() as s:
        registry.provision(s, r, tmp_path, name, base_model=BASE)
    assert "'other/llama-3-8b'" in str(err.value) and f"{BASE!r}" in str(err.value)
    with session_scope() as s:
        assert s.scalars(select(Archetype).where(Archetype.name == name)).first() is None
    assert registry.get_chain(r, name) is None


@pytest.mark.parametrize("layout, message", [
    ("unknown-task", "unknown adapter task"),
    ("no-config", "no adapter_config.json"),
    ("empty", "no adapters"),
])
def test_provision_rejects_malformed_folders(r, tmp_path, layout, message):
    name = _name()
    (tmp_path / name).mkdir()
    if layout == "unknown-task":
        make_adapters(tmp_path, name, tasks=["telepathy"])
    elif layout == "no-config":
        (tmp_path / name / "personality").mkdir()
    with pytest.raises(registry.ProvisionError, match=message), session_scope() as s:
        registry.provision(s, r, tmp_path, name, base_model=BASE)


def test_publish_all_rebuilds_the_redis_cache_from_the_database(r, tmp_path):
    name = _name()
    chain = provision(r, tmp_path, name, "http://gpu-2:8000/v1", base_model=BASE)
    r.delete(rkeys.lora_chain(name))
    assert registry.get_chain(r, name) is None
    with session_scope() as s:
        assert registry.publish_all(s, r) >= 1
    assert registry.get_chain(r, name) == chain


# ------------------------------------------------------------------ routing

def test_llamacpp_routes_to_the_base_model_and_says_so(r, configure, world):
    configure(LLM_BACKEND="llamacpp")
    route = routing.resolve(r, "dialogue", npc=world["npcs"]["count_v"])
    assert route.adapter is None and route.model == settings.get_settings().llm_model
    assert route.reason == "llamacpp: no adapters"


def test_each_purpose_routes_to_its_task_adapter(r, vllm, world, tmp_path):
    name = _name()
    provision(r, tmp_path, name, vllm.url)
    npc = npc_with(r, world, "count_v", name)
    routes = {p: routing.resolve(r, p, npc=npc) for p in ("dialogue", "simulation", "analysis")}
    assert routes["dialogue"].model == f"{name}-dialogue_style-v1"
    assert routes["simulation"].model == f"{name}-action_policy-v1"
    assert routes["analysis"].model == f"{name}-social_dynamics-v1"
    assert all(rt.base_url == vllm.url and rt.archetype == name for rt in routes.values())
    assert set(vllm.loaded) == {rt.model for rt in routes.values()}
    reply = calls.generate_reply(npc, "", [], [], "Good evening.", route=routes["dialogue"])
    assert reply.model == routes["dialogue"].model
    assert vllm.chat_models[-1] == routes["dialogue"].model
    assert reply.text.startswith(f"[{routes['dialogue'].model}]")


def test_purpose_to_task_mapping_is_configurable(r, vllm, configure, world, tmp_path):
    name = _name()
    provision(r, tmp_path, name, vllm.url)
    configure(LORA_PURPOSE_TASKS=json.dumps({"dialogue": "personality"}))
    npc = npc_with(r, world, "count_v", name)
    assert routing.resolve(r, "dialogue", npc=npc).model == f"{name}-personality-v1"
    sim = routing.resolve(r, "simulation", npc=npc)
    assert sim.adapter is None and "no adapter task for simulation" in sim.reason


def test_unknown_or_missing_archetypes_fall_back_to_the_base_model(r, vllm, world, tmp_path):
    from workers import metrics

    miller = npc_with(r, world, "miller", None)
    route = routing.resolve(r, "dialogue", npc=miller)
    assert (route.model, route.adapter, route.archetype) == (BASE, None, None)
    ghost = _name()
    before = metrics.REGISTRY.get_sample_value(
        "npc_lora_fallbacks_total", {"archetype": ghost, "reason": "unregistered"}) or 0
    route = routing.resolve(r, "dialogue", npc=npc_with(r, world, "miller", ghost))
    assert route.model == BASE and route.archetype == ghost and "unregistered" in route.reason
    assert metrics.REGISTRY.get_sample_value(
        "npc_lora_fallbacks_total", {"archetype": ghost, "reason": "unregistered"}) == before + 1
    partial = _name()
    provision(r, tmp_path, partial, vllm.url, tasks=["personality"])
    route = routing.resolve(r, "dialogue", archetype=partial)
    assert route.model == BASE and "no_adapter" in route.reason
    assert vllm.load_requests == 0


def test_simulation_of_mixed_archetypes_uses_the_base_model(r, vllm, tmp_path):
    from tasks.simulate_world import _route

    name = _name()
    provision(r, tmp_path, name, vllm.url)
    assert _route(r, [name, name.upper()]).model == f"{name}-action_policy-v1"
    mixed = _route(r, [name, None])
    assert mixed.adapter is None and "mixed archetypes" in mixed.reason


def test_world_simulation_uses_the_archetypes_action_policy_adapter(r, vllm, world, tmp_path,
                                                                   celery_app):
    """A tick whose simulated NPCs share an archetype makes its call with that archetype's
    ``action_policy`` adapter, and its trace says so."""
    from models import GameSession
    from contract.payloads import SimulationPayload
    from tasks.simulate_world import _simulate

    name = _name()
    provision(r, tmp_path, name, vllm.url)
    for key in ("count_v", "miller"):
        npc_with(r, world, key, name)
    sid = uuid.uuid4().hex
    with session_scope() as s:
        s.add(GameSession(id=sid, world_id=world["id"]))
    nearline.open_session(r, sid, world["id"], "tester")
    vllm.chat_content = lambda body: json.dumps({"updates": [
        {"lore_entry_id": "count_v", "update_summary": "Count V walked the crypt at dusk."}]})
    try:
        result = _simulate(SimulationPayload(session_id=sid, tick_id="t-1"), r,
                           celery_sender(celery_app))
    finally:
        r.delete("note_update")
    assert result["model"]["adapter"] == vllm.chat_models[-1] == f"{name}-action_policy-v1"
    assert result["did"] == {"count_v": "Count V walked the crypt at dusk."}


def test_mistral_routes_to_the_fine_tuned_model_id(r, configure, tmp_path):
    configure(GENERATION_BACKEND="mistral", GENERATION_MODEL="mistral-small-latest")
    name = _name()
    make_adapters(tmp_path, name, tasks=["dialogue_style"],
                  meta={"mistral_model": "ft:mistral-small:vamp:1"})
    with session_scope() as s:
        registry.provision(s, r, tmp_path, name, base_model=BASE, server_url="http://x/v1")
    route = routing.resolve(r, "dialogue", archetype=name)
    assert route.model == "ft:mistral-small:vamp:1" and route.base_url is None
    assert route.adapter == f"{name}-dialogue_style-v1"


# ------------------------------------------------------------------ coordinator

def test_lru_unloads_the_least_recently_used_adapter_at_the_cap(r, vllm, configure, tmp_path):
    configure(LORA_MAX_LOADED_ADAPTERS=2)
    name = _name()
    chain = provision(r, tmp_path, name, vllm.url)
    tasks = ["personality", "dialogue_style", "action_policy"]
    a, b, c = (chain["adapters"][t]["name"] for t in tasks)
    co = coord_mod.get_coordinator(r)
    for task in ("personality", "dialogue_style", "personality", "action_policy"):
        adapter = chain["adapters"][task]
        assert co.ensure_loaded(vllm.url, adapter["name"], adapter["path"], name).ok
    assert set(vllm.loaded) == {a, c} and vllm.unloads == 1
    assert co.loaded(vllm.url) == [a, c]  # least recently used first
    assert vllm.loads == 3
    assert co.usage(b)["unloads"] == 1 and co.usage(a)["requests"] == 2


def _load_in_child(redis_url: str, server_url: str, name: str, path: str, barrier, out) -> None:
    """One process's ensure_loaded (spawned: a process of its own, with its own Redis client)."""
    from inference.lora.coordinator import Coordinator
    from memory.nearline import get_redis

    barrier.wait()
    out.put(Coordinator(get_redis(redis_url)).ensure_loaded(server_url, name, path).outcome)


def test_concurrent_requests_from_processes_and_threads_load_once(r, vllm, tmp_path):
    vllm.load_delay_s = 0.5
    name = _name()
    adapter = provision(r, tmp_path, name, vllm.url)["adapters"]["dialogue_style"]
    url = settings.get_settings().effective_redis_url
    ctx = multiprocessing.get_context("spawn")
    n_procs, n_threads = 3, 4
    barrier, out = ctx.Barrier(n_procs + n_threads), ctx.Queue()
    procs = [ctx.Process(target=_load_in_child,
                         args=(url, vllm.url, adapter["name"], adapter["path"], barrier, out))
             for _ in range(n_procs)]
    for p in procs:
        p.start()
    results: list[str] = []

    def thread_load():
        from redis import Redis

        co = coord_mod.Coordinator(Redis.from_url(nearline.redis_url_for_client(url)))
        barrier.wait()
        results.append(co.ensure_loaded(vllm.url, adapter["name"], adapter["path"]).outcome)

    threads = [threading.Thread(target=thread_load) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results += [out.get(timeout=5) for _ in procs]
    assert vllm.load_requests == 1 and vllm.loads == 1
    assert sorted(results) == ["cached"] * (n_procs + n_threads - 1) + ["loaded"]


def test_already_loaded_on_the_server_counts_as_loaded(r, vllm, tmp_path):
    name = _name()
    adapter = provision(r, tmp_path, name, vllm.url)["adapters"]["dialogue_style"]
    vllm.loaded[adapter["name"]] = adapter["path"]  # e.g. loaded before a coordinator restart
    route = routing.resolve(r, "dialogue", archetype=name)
    assert route.adapter == adapter["name"] and vllm.load_requests == 1
    assert coord_mod.get_coordinator(r).loaded(vllm.url) == [adapter["name"]]


def test_adapter_missing_on_the_server_is_broken_and_falls_back_with_a_metric(r, vllm, tmp_path):
    from workers import metrics

    name = _name()
    adapter = provision(r, tmp_path, name, vllm.url)["adapters"]["dialogue_style"]
    (Path(adapter["path"]) / "adapter_config.json").unlink()
    labels = {"archetype": name, "reason": "broken"}
    route = routing.resolve(r, "dialogue", archetype=name)
    assert route.model == BASE and route.adapter is None and "broken" in route.reason
    assert metrics.REGISTRY.get_sample_value("npc_lora_fallbacks_total", labels) == 1
    assert metrics.REGISTRY.get_sample_value(
        "npc_lora_loads_total", {"server": vllm.url, "outcome": "broken"}) >= 1
    assert routing.resolve(r, "dialogue", archetype=name).adapter is None
    assert vllm.load_requests == 1  # a broken adapter is not tried again
    assert metrics.REGISTRY.get_sample_value("npc_lora_fallbacks_total", labels) == 2
    with session_scope() as s:
        chain = next(c for c in registry.list_chains(s, r) if c["name"] == name)
    assert chain["adapters"]["dialogue_style"]["broken"] is True
    assert "No adapter found" in chain["adapters"]["dialogue_style"]["broken_reason"]
    # provisioning it again (fixed) clears the mark
    make_adapters(tmp_path, name, tasks=["dialogue_style"])
    with session_scope() as s:
        registry.provision(s, r, tmp_path, name, server_url=vllm.url)
    assert routing.resolve(r, "dialogue", archetype=name).adapter == adapter["name"]


def test_server_errors_are_retried_then_fall_back_without_marking_broken(r, vllm, configure,
                                                                         tmp_path):
    name = _name()
    adapter = provision(r, tmp_path, name, vllm.url)["adapters"]["dialogue_style"]
    vllm.fail_loads.extend([503, 500])
    route = routing.resolve(r, "dialogue", archetype=name)
    assert route.adapter == adapter["name"] and vllm.load_requests == 3
    other = provision(r, tmp_path, _name(), vllm.url)["adapters"]["dialogue_style"]
    vllm.fail_loads.extend([503] * 3)  # LORA_LOAD_ATTEMPTS=3: all fail
    arch = other["name"].split("-")[0]
    route = routing.resolve(r, "dialogue", archetype=arch)
    assert route.adapter is None and "load_failed" in route.reason
    assert r.hget(rkeys.LORA_BROKEN, other["name"]) is None
    assert routing.resolve(r, "dialogue", archetype=arch).adapter == other["name"]


def test_unload_of_an_adapter_the_server_lacks_is_not_an_error(r, vllm):
    co = coord_mod.get_coordinator(r)
    r.zadd(rkeys.lora_loaded(vllm.url), {"ghost-adapter": 1.0})
    assert co.unload(vllm.url, "ghost-adapter") is False
    assert co.loaded(vllm.url) == []


# ------------------------------------------------------------------ API, CLI, turn path

@pytest.fixture
def client(vllm, celery_app):
    """The dialogue server in-process; a session-wide worker left running by an earlier
    module does not consume meanwhile (its analyses would load adapters on ``vllm`` too)."""
    from fastapi.testclient import TestClient

    from workers.web import app

    with consumers_paused(celery_app), TestClient(app, headers=api_headers()) as c:
        yield c


def test_api_provisions_lists_and_sets_archetypes(client, vllm, world, tmp_path):
    name = _name()
    make_adapters(tmp_path, name)
    res = client.post("/v1/archetypes/provision",
                      json={"root": str(tmp_path), "archetype": name, "server_url": vllm.url})
    assert res.status_code == 201, res.text
    assert res.json()["archetypes"][0]["name"] == name
    got = client.get(f"/v1/archetypes/{name}").json()
    assert len(got["adapters"]) == 7 and got["adapters"]["personality"]["loaded"] is False
    assert any(c["name"] == name for c in client.get("/v1/archetypes").json()["archetypes"])
    assert client.get(f"/v1/archetypes/{_name()}").status_code == 404
    res = client.put(f"/v1/worlds/{world['key']}/characters/count_v/archetype",
                     json={"archetype": name})
    assert res.status_code == 200 and res.json()["registered"] is True
    res = client.get(f"/v1/worlds/{world['key']}/characters/count_v/route",
                     params={"purpose": "simulation"})
    assert res.json()["adapter"] == f"{name}-action_policy-v1", res.text
    assert vllm.load_requests == 0  # a preview loads nothing


@pytest.mark.parametrize("method, url, body, status", [
    ("post", "/v1/archetypes/provision", {"root": "/nonexistent/adapters"}, 422),
    ("post", "/v1/archetypes/provision", {"root": "/tmp", "bogus": 1}, 422),
    ("put", "/v1/worlds/{w}/characters/crypt/archetype", {"archetype": "vampire"}, 422),
    ("put", "/v1/worlds/{w}/characters/count_v/archetype", {"archetype": "Not Valid!"}, 422),
    ("put", "/v1/worlds/{w}/characters/nobody/archetype", {"archetype": "vampire"}, 404),
    ("put", "/v1/worlds/no-such-world/characters/x/archetype", {"archetype": "vampire"}, 404),
    ("get", "/v1/worlds/{w}/characters/count_v/route?purpose=poetry", None, 422),
])
def test_api_rejects_bad_input(client, world, method, url, body, status):
    res = client.request(method.upper(), url.format(w=world["key"]), json=body)
    assert res.status_code == status, res.text
    assert res.json()["detail"]


def test_api_reports_a_base_model_mismatch(client, tmp_path):
    name = _name()
    make_adapters(tmp_path, name, base="someone/else")
    res = client.post("/v1/archetypes/provision", json={"root": str(tmp_path)})
    assert res.status_code == 422 and "someone/else" in res.json()["detail"]


@pytest.mark.parametrize("method, url", [
    ("GET", "/v1/archetypes"), ("POST", "/v1/archetypes/provision"),
    ("PUT", "/v1/worlds/w/characters/c/archetype"), ("GET", "/v1/worlds/w/characters/c/route")])
def test_api_needs_a_key(client, method, url):
    res = client.request(method, url, headers={"Authorization": "Bearer wrong-key"})
    assert res.status_code == 401


def test_cli_provisions_lists_and_sets(r, vllm, world, tmp_path):
    from workers.cli import cli

    runner = CliRunner()
    name = _name()
    make_adapters(tmp_path, name)
    res = runner.invoke(cli, ["provision-archetypes", str(tmp_path), "--server-url", vllm.url,
                              "--server-id", "gpu-a"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["archetypes"][0]["server_id"] == "gpu-a"
    res = runner.invoke(cli, ["archetypes"])
    assert res.exit_code == 0 and name in res.output
    res = runner.invoke(cli, ["set-archetype", world["key"], "count_v", name])
    assert res.exit_code == 0 and json.loads(res.output)["archetype"] == name
    bad = tmp_path / "bad"
    make_adapters(bad, _name(), base="someone/else")
    res = runner.invoke(cli, ["provision-archetypes", str(bad)])
    assert res.exit_code == 1 and "someone/else" in res.output


def _vampire_session(client, vllm, world, tmp_path: Path) -> tuple[str, str]:
    """Over the API: provision a new archetype's chain on ``vllm``, give Count V that
    archetype, open a session. Returns ``(archetype, session id)``."""
    name = _name()
    make_adapters(tmp_path, name)
    assert client.post("/v1/archetypes/provision", json={
        "root": str(tmp_path), "server_url": vllm.url}).status_code == 201
    client.put(f"/v1/worlds/{world['key']}/characters/count_v/archetype", json={"archetype": name})
    return name, client.post("/v1/sessions", json={"world": world["key"]}).json()["session_id"]


def test_turn_uses_the_archetype_adapter_with_no_database_query(client, vllm, world, tmp_path):
    """A played turn routes to the NPC's dialogue adapter, loading it on first use, and the
    turn path (route and load included) still makes no database query."""
    name, sid = _vampire_session(client, vllm, world, tmp_path)
    try:
        with sql_statements() as statements:
            first = client.post(f"/v1/sessions/{sid}/turns",
                                json={"npc_id": "count_v", "player_text": "Good evening, Count."})
            second = client.post(f"/v1/sessions/{sid}/turns",
                                 json={"npc_id": "miller", "player_text": "Flour?"})
    finally:
        nearline.get_redis().delete("analysis", "archive", "simulate_world")
    assert first.status_code == 200, first.text
    assert statements == []
    out = first.json()
    assert out["model"] == out["adapter"] == f"{name}-dialogue_style-v1"
    assert out["npc_text"].startswith(f"[{out['model']}]")
    assert "route;dur=" in first.headers["server-timing"]
    assert second.json()["adapter"] is None and second.json()["model"] == BASE
    assert vllm.loads == 1


@pytest.mark.parametrize("stream", [False, True], ids=["reply", "stream"])
def test_turn_reloads_an_adapter_the_server_lost(client, vllm, world, tmp_path, stream):
    """vLLM restarted (it forgets runtime adapters) while Redis still lists the adapter as
    loaded: the call's 404 makes the coordinator forget it, load it again, and retry once
    (a streamed turn too: the 404 comes before its first token)."""
    from npc_memory_client import sse_events

    name, sid = _vampire_session(client, vllm, world, tmp_path)
    try:
        turn = {"npc_id": "count_v", "player_text": "Good evening, Count."}
        assert client.post(f"/v1/sessions/{sid}/turns", json=turn).json()["adapter"]
        vllm.loaded.clear()  # the restart
        res = client.post(f"/v1/sessions/{sid}/turns", json={**turn, "stream": stream})
    finally:
        nearline.get_redis().delete("analysis", "archive", "simulate_world")
    assert res.status_code == 200, res.text
    if stream:
        events = list(sse_events(res.text.splitlines()))
        assert events[-1][0] == "done"
        out = json.loads(events[-1][1])
        assert "".join(json.loads(d)["text"] for e, d in events if e == "token") == \
            out["npc_text"] == f"[{out['model']}] Well met, traveller."
    else:
        out = res.json()
    assert out["adapter"] == f"{name}-dialogue_style-v1"
    assert vllm.loads == 2


def test_turn_analysis_uses_the_archetypes_social_dynamics_adapter(r, vllm, world, tmp_path,
                                                                   celery_app):
    """``npc_memory.analyze_turn`` for a vampire's turn asks the vampire chain's analysis
    adapter (``LORA_PURPOSE_TASKS``: analysis -> social_dynamics); the Miller, who has no
    archetype, gets the base model."""
    from contract.payloads import TurnPayload

    name = _name()
    provision(r, tmp_path, name, vllm.url)
    npc_with(r, world, "count_v", name)
    npc_with(r, world, "miller", None)
    vllm.chat_content = lambda body: json.dumps({"updates": [], "creations": []})
    task = celery_app.tasks["npc_memory.analyze_turn"]
    used = []
    for key in ("count_v", "miller"):
        turn_id = uuid.uuid4().hex
        payload = TurnPayload(turn_id=turn_id, session_id=uuid.uuid4().hex, world_id=world["id"],
                              seq=1, npc_entry_id=world["npcs"][key]["id"],
                              player_text="Good evening.", npc_text="Evening.", latency_ms=1,
                              created_at=1_700_000_000.0)
        result = task.apply(kwargs=payload.model_dump(mode="json"), task_id=turn_id).get()
        assert result["updates"] == 0
        used.append(vllm.chat_models[-1])
    assert used == [f"{name}-social_dynamics-v1", BASE]
