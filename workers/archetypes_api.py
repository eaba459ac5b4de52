"""Archetype endpoints of the dialogue server: provision archetype chains from a directory
of PEFT adapters, list the registry with what is loaded where and how much each adapter is
used, set a character's archetype, and preview an NPC's model route.

They read and write the database (``inference.lora.registry``) and are not on the dialogue
hot path; every route needs an API key like the other ``/v1`` routes. Invalid input answers
422 with the reason (a base model mismatch names both models), unknown things 404.

Provisioning reads folders on the dialogue server's disk, and only inside ``ADAPTERS_ROOT``
(default ``DATA_DIR/adapters``): a ``root`` (absolute, or relative to ``ADAPTERS_ROOT``) or an
archetype folder that resolves outside it answers 422 without looking at it. The adapters'
``path`` must also be valid on the model server (a shared volume), since vLLM loads them from
there.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Query
from pydantic import Field
from sqlalchemy import select

from inference.lora import registry, routing
from inference.lora.coordinator import get_coordinator
from memory import nearline
from memory.db import session_scope
from memory.safe_input import RequestModel, SafeStr
from models import LoreEntry, World
from settings import get_settings
from workers.api.errors import responses

router = APIRouter()


class ProvisionIn(RequestModel):
    """``POST /v1/archetypes/provision`` body."""

    root: SafeStr = Field(min_length=1, max_length=1000, description=(
        "folder of <archetype>/<task>/adapter_config.json inside ADAPTERS_ROOT (absolute, or "
        "relative to ADAPTERS_ROOT)"))
    archetype: SafeStr | None = Field(None, min_length=1, max_length=100, description=(
        "provision only this archetype folder; default every folder under root"))
    server_url: SafeStr | None = Field(None, min_length=1, max_length=500, description=(
        "the archetype's vLLM server (OpenAI base URL, .../v1); default GENERATION_BASE_URL"))
    server_id: SafeStr = Field("", max_length=200, description="e.g. g5-2xlarge-001")
    base_model: SafeStr | None = Field(None, min_length=1, max_length=500, description=(
        "served base model the adapters must name; default LORA_BASE_MODEL or the model"))
    voice_service_url: SafeStr | None = Field(None, max_length=500)
    facial_service_url: SafeStr | None = Field(None, max_length=500)
    body_service_url: SafeStr | None = Field(None, max_length=500)


class ArchetypeIn(RequestModel):
    """``PUT /v1/worlds/{world}/characters/{npc_id}/archetype`` body (null clears it)."""

    archetype: SafeStr | None = Field(max_length=100)


def confined_root(root: str, archetype: str | None = None) -> Path:
    """``root`` (absolute, or relative to ``ADAPTERS_ROOT``) resolved, symlinks followed.

    Raises:
        HTTPException: 422 when it, or ``root/archetype``, is outside ``ADAPTERS_ROOT`` (the
            message names neither the folder's contents nor ``ADAPTERS_ROOT``).
    """
    base = get_settings().effective_adapters_root
    path = (base / root).resolve()
    for candidate in (path, (path / archetype).resolve() if archetype else path):
        if candidate != base and base not in candidate.parents:
            raise HTTPException(422, "root must be a folder inside the server's adapters "
                                     "root (ADAPTERS_ROOT)")
    return path


def _with_runtime(chain: dict, r) -> dict:
    """The chain with each adapter's ``loaded`` flag and usage statistics."""
    coord = get_coordinator(r)
    loaded = set(coord.loaded(chain["server_url"]))
    for adapter in chain["adapters"].values():
        adapter["loaded"] = adapter["name"] in loaded
        adapter["usage"] = coord.usage(adapter["name"])
    return chain


@router.post("/v1/archetypes/provision", status_code=201, responses=responses(400))
def provision(body: ProvisionIn) -> dict:
    """Register archetype chains from PEFT adapters; 422 with the reason when a folder,
    config or base model is wrong or a folder cannot be read (then nothing is registered),
    and 422 without looking when ``root`` is outside ``ADAPTERS_ROOT``."""
    root = confined_root(body.root, body.archetype)
    r = nearline.get_redis()
    kwargs = body.model_dump(exclude={"root", "archetype"})
    try:  # registry.ProvisionError: 422 with its reason (workers.api.errors)
        with session_scope() as s:
            if body.archetype:
                chains = [registry.provision(s, r, root, body.archetype, **kwargs)]
            else:
                chains = registry.provision_root(s, r, root, **kwargs)
    except OSError as exc:  # e.g. a name too long for the file system: the reason, no path
        raise HTTPException(422, f"root or archetype cannot be read: {exc.strerror}") from exc
    return {"archetypes": chains}


@router.get("/v1/archetypes")
def list_archetypes() -> dict:
    """Every registered chain: server, services, adapters with rank, size, version, metrics,
    ``broken``, ``loaded`` and ``usage`` (requests, loads, unloads, fallbacks, last_used)."""
    r = nearline.get_redis()
    with session_scope() as s:
        chains = registry.list_chains(s, r)
    return {"archetypes": [_with_runtime(c, r) for c in chains]}


@router.get("/v1/archetypes/{name}", responses=responses(404, e404="unknown archetype"))
def get_archetype(name: str) -> dict:
    """One chain (as in the list); 404 when not registered."""
    r = nearline.get_redis()
    with session_scope() as s:
        chains = [c for c in registry.list_chains(s, r) if c["name"] == registry.normalise(name)]
    if not chains:
        raise HTTPException(404, f"unknown archetype {name!r}")
    return _with_runtime(chains[0], r)


@router.put("/v1/worlds/{world}/characters/{npc_id}/archetype",
            responses=responses(400, 404, e404="unknown world or entry"))
def set_archetype(world: str, npc_id: str, body: ArchetypeIn) -> dict:
    """Set a character's archetype (null clears it); it takes effect on the next turn.
    404 unknown world or entry, 422 not a character or an invalid name. An archetype with no
    registered chain is accepted (``registered: false``): the NPC uses the base model until
    one is provisioned."""
    r = nearline.get_redis()
    try:  # registry.UnknownCharacter: 404 (workers.api.errors)
        with session_scope() as s:
            return registry.set_character_archetype(s, r, world, npc_id, body.archetype)
    except ValueError as exc:  # not a character, an invalid name
        raise HTTPException(422, str(exc)) from exc


@router.get("/v1/worlds/{world}/characters/{npc_id}/route",
            responses=responses(404, e404="unknown entry"))
def preview_route(world: str, npc_id: str,
                  purpose: str = Query("dialogue", pattern="^(dialogue|simulation|analysis)$")
                  ) -> dict:
    """Where a ``purpose`` call for this NPC would go now (nothing is loaded)."""
    r = nearline.get_redis()
    with session_scope() as s:
        entry = s.execute(select(LoreEntry.id, LoreEntry.world_id, LoreEntry.archetype)
                          .join(World, World.id == LoreEntry.world_id)
                          .where(World.key == world, LoreEntry.key == npc_id)).one_or_none()
    if entry is None:
        raise HTTPException(404, f"unknown entry {npc_id!r} in world {world!r}")
    route = routing.resolve(r, purpose, archetype=entry.archetype, ensure=False)
    return route.as_dict()
