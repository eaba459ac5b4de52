"""Routing a model call: NPC -> archetype -> the adapter of the call's purpose -> model.

A call's *purpose* (``dialogue``, ``simulation``, ``analysis``) names its model role
(:data:`PURPOSE_ROLES`) and, through ``LORA_PURPOSE_TASKS``, the adapter task it uses
(default: dialogue -> ``dialogue_style``, simulation -> ``action_policy``, analysis ->
``social_dynamics``). What the route is depends on the role's backend:

- ``llamacpp`` (the embedded default) and ``openai``: no adapters; the base model, and the
  route says so (``reason="llamacpp: no adapters"``); no Redis read at all.
- ``vllm``: the archetype's adapter on the archetype's server (``model=<adapter name>``),
  loaded first if needed (``coordinator.Coordinator.ensure_loaded``).
- ``mistral``: the adapter's fine-tuned model id (``mistral_model``, registered with the
  adapter), on the configured Mistral server.

Anything missing falls back to the role's base model with the reason: the NPC has no
archetype, the archetype is not registered (``unregistered``), its chain lacks that task
(``no_adapter``), the adapter is broken (``broken``) or could not be loaded this time
(``load_failed``); the last four count in ``npc_lora_fallbacks_total{archetype, reason}``.

Cost on the hot path: no SQL; one Redis round trip (a Lua script: the character's archetype,
the chain's adapter, its broken mark, and for a loaded adapter the LRU touch and request
count), plus the load itself the first time an adapter is used on its server. The script
reads keys it computes (``lora:chain:*``, ``lora:loaded:*``), which a single Redis allows;
a Redis Cluster would need hash tags.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

from inference.llm import ChatModel, chat_model, routed_chat_model
from inference.lora import registry
from inference.lora.coordinator import emit, get_coordinator
from memory import keys as rkeys
from settings import get_settings

T = TypeVar("T")

PURPOSE_ROLES = {"dialogue": "generation", "simulation": "maintenance", "analysis": "analysis"}
"""Call purpose -> model role (``settings.Settings.role``)."""

_LOOKUP = """
local arch = ARGV[2]
if arch == '' then
  if ARGV[1] == '' then return {} end
  arch = redis.call('HGET', KEYS[1], ARGV[1])
  if not arch then return {} end
end
local raw = redis.call('GET', 'lora:chain:' .. arch)
if not raw then return {arch} end
local chain = cjson.decode(raw)
local a = chain['adapters'][ARGV[3]]
if not a then return {arch, chain['server_url']} end
local name = a['name']
local broken = redis.call('HGET', 'lora:broken', name)
if broken then return {arch, chain['server_url'], cjson.encode(a), broken, 0} end
local key = 'lora:loaded:' .. chain['server_url']
local loaded = 0
if redis.call('ZSCORE', key, name) then
  loaded = 1
  redis.call('ZADD', key, 'XX', ARGV[4], name)
  redis.call('HINCRBY', 'lora:usage:' .. name, 'requests', 1)
  redis.call('HSET', 'lora:usage:' .. name, 'last_used', ARGV[4])
end
return {arch, chain['server_url'], cjson.encode(a), '', loaded}
"""

_scripts: dict[int, object] = {}


@dataclass(frozen=True)
class ModelRoute:
    """Where a call goes.

    ``model`` is what the call sends as ``model`` (an adapter name on vLLM, a fine-tuned id
    on Mistral, else the role's base model); ``base_url`` the server (None: the role's);
    ``adapter`` the adapter's registered name, or None for the base model; ``archetype``
    the NPC's archetype if it has one; ``reason`` why, in words.
    """

    purpose: str
    role: str
    backend: str
    model: str
    base_url: str | None = None
    adapter: str | None = None
    archetype: str | None = None
    reason: str = ""

    def chat_model(self) -> ChatModel:
        """The ChatModel that makes this call (process-wide clients)."""
        if self.adapter is None and self.base_url is None:
            return chat_model(self.role)
        return routed_chat_model(self.role, self.model, self.base_url)

    def as_dict(self) -> dict:
        """JSON-ready."""
        return {"purpose": self.purpose, "backend": self.backend, "model": self.model,
                "base_url": self.base_url, "adapter": self.adapter,
                "archetype": self.archetype, "reason": self.reason}


def _lookup(r: redis.Redis, world_id: int | None, entry_id: int | None, archetype: str | None,
            task: str) -> list:
    script = _scripts.get(id(r))
    if script is None:
        script = _scripts[id(r)] = r.register_script(_LOOKUP)
    key = rkeys.world_archetypes(world_id) if world_id is not None else rkeys.LORA_NONE
    out = script(keys=[key], args=["" if entry_id is None else entry_id,
                                   registry.normalise(archetype) or "", task, repr(time.time())])
    return [v.decode() if isinstance(v, bytes) else v for v in out]


def _fallback(r: redis.Redis, base: ModelRoute, archetype: str, reason: str, detail: str,
              adapter: str | None = None) -> ModelRoute:
    emit("fallback", archetype=archetype, reason=reason)
    if adapter:
        r.hincrby(rkeys.lora_usage(adapter), "fallbacks", 1)
    return ModelRoute(base.purpose, base.role, base.backend, base.model, archetype=archetype,
                      reason=f"{reason}: {detail}; base model")


def resolve(r: redis.Redis, purpose: str, *, npc: dict | None = None,
            archetype: str | None = None, ensure: bool = True) -> ModelRoute:
    """The route of a ``purpose`` call for an NPC.

    Args:
        npc: the NPC's cached lore entry (``{id, world_id, ...}``, ``memory.nearline``); its
            archetype is read from ``world:{world_id}:archetypes``.
        archetype: the archetype, when known already (then ``npc`` is not needed).
        ensure: load a vLLM adapter that is not loaded (False: report the route without
            loading, for previews).

    Raises:
        ValueError: unknown purpose.
        redis.exceptions.RedisError: Redis failed (callers map it to 503 like the rest of
            the hot path).
    """
    if purpose not in PURPOSE_ROLES:
        raise ValueError(f"unknown call purpose {purpose!r}; one of {sorted(PURPOSE_ROLES)}")
    s = get_settings()
    role = PURPOSE_ROLES[purpose]
    backend, _url, base_model = s.role(role)
    base = ModelRoute(purpose, role, backend, base_model, reason="base model")
    if backend in ("llamacpp", "openai"):
        return ModelRoute(purpose, role, backend, base_model,
                          reason=f"{backend}: no adapters")
    task = s.lora_purpose_tasks.get(purpose)
    if not task:
        return ModelRoute(purpose, role, backend, base_model,
                          reason=f"no adapter task for {purpose}")
    world_id = npc.get("world_id") if npc else None
    entry_id = npc.get("id") if npc else None
    found = _lookup(r, world_id, entry_id, archetype, task)
    if not found:
        return ModelRoute(purpose, role, backend, base_model, reason="no archetype; base model")
    arch = found[0]
    if len(found) == 1:
        return _fallback(r, base, arch, "unregistered", f"archetype {arch!r} is not registered")
    if len(found) == 2:
        return _fallback(r, base, arch, "no_adapter", f"{arch!r} has no {task} adapter")
    server_url, adapter, broken, loaded = found[1], json.loads(found[2]), found[3], found[4]
    name = adapter["name"]
    if broken:
        return _fallback(r, base, arch, "broken", f"adapter {name} is broken ({broken})", name)
    if backend == "mistral":
        if not adapter.get("mistral_model"):
            return _fallback(r, base, arch, "no_adapter",
                             f"adapter {name} has no fine-tuned Mistral model id", name)
        if not loaded:
            r.hincrby(rkeys.lora_usage(name), "requests", 1)
        return ModelRoute(purpose, role, backend, adapter["mistral_model"], adapter=name,
                          archetype=arch, reason=f"{arch} {task}: fine-tuned model")
    if not loaded and ensure:
        result = get_coordinator(r).ensure_loaded(server_url, name, adapter["path"], arch)
        if result.outcome == "broken":
            return _fallback(r, base, arch, "broken", f"adapter {name}: {result.detail}", name)
        if not result.ok:
            return _fallback(r, base, arch, "load_failed",
                             f"adapter {name}: {result.detail}", name)
    return ModelRoute(purpose, role, backend, name, base_url=server_url, adapter=name,
                      archetype=arch, reason=f"{arch} {task} adapter"
                      + ("" if loaded or ensure else " (not loaded)"))


def forget_if_unloaded(r: redis.Redis, route: ModelRoute, exc: BaseException) -> bool:
    """After a failed call on ``route``: True when the server did not know the adapter (vLLM
    404 for the model: it restarted, or another client unloaded it), which is then forgotten
    so that resolving the route again loads it; the caller retries once. False otherwise."""
    import openai

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if route.adapter is None or route.base_url is None or not isinstance(cause, openai.NotFoundError):
        return False
    get_coordinator(r).forget(route.base_url, route.adapter)
    return True


def call_routed(r: redis.Redis, route: ModelRoute, call: Callable[[ModelRoute], T],
                reresolve: Callable[[], ModelRoute]) -> tuple[T, ModelRoute]:
    """``call(route)``; when it fails because the server lost the route's adapter
    (:func:`forget_if_unloaded`), resolve the route again with ``reresolve()`` (which loads
    the adapter again) and call once more. Returns ``(result, route used)``.

    Raises:
        inference.llm.ModelError: the call failed for another reason, or failed again.
    """
    from inference.llm import ModelError

    try:
        return call(route), route
    except ModelError as exc:
        if not forget_if_unloaded(r, route, exc):
            raise
    route = reresolve()
    return call(route), route
