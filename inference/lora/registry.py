"""The archetype registry: archetypes and their LoRA adapters in the database, published to
Redis for the hot path, and provisioning from a directory of PEFT adapters.

Provisioning reads ``<root>/<archetype>/<task>/adapter_config.json`` (PEFT's file: ``r`` is
the LoRA rank, ``base_model_name_or_path`` the base model) for each task of
``models.archetypes.ADAPTER_TASKS`` present, the size of the task folder's files, and an
optional ``<task>/adapter_meta.json`` ``{"version", "trained_on", "metrics",
"mistral_model"}`` (the adapter metadata PEFT does not record). Every adapter's
base model must be the served base model, else nothing is registered: an adapter trained on
another base loads on vLLM only to produce garbage, or fails at load time with a shape error.
The adapter's ``path`` is the folder as given: the vLLM server reads it, so the root must be
the same path on the model server (a shared volume) as where provisioning runs.

Redis keys (rebuilt from the database by :func:`publish_all`, e.g. at dialogue server start):

- ``lora:chain:{archetype}``   JSON chain ``{name, server_url, server_id, base_model,
  services: {voice, facial, body}, adapters: {task: {name, path, rank, size_mb, base_model,
  version, trained_on, metrics, mistral_model}}}``; one GET answers a route;
- ``lora:archetypes``          set of registered archetype names;
- ``lora:broken``              hash adapter name -> why the server could not load it (cleared
  by provisioning the adapter again);
- ``world:{world_id}:archetypes`` hash lore entry id -> archetype of the character (written
  with the cached lore entries by ``memory.nearline.cache_entries`` and by
  :func:`set_character_archetype`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from memory import keys as rkeys
from models import Adapter, Archetype, LoreEntry, World
from models.archetypes import ADAPTER_TASKS
from settings import get_settings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_META = "adapter_meta.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


class ProvisionError(ValueError):
    """Provisioning refused: a missing folder or config, an unknown task, an invalid name, or
    an adapter trained on another base model (the message says which and why)."""


class UnknownCharacter(LookupError):
    """No such world, or no such entry in it."""


def normalise(archetype: str | None) -> str | None:
    """Archetype names are compared lower-case and stripped; '' is None."""
    if archetype is None:
        return None
    name = archetype.strip().lower()
    return name or None


def served_base_model() -> str:
    """The base model adapters must be trained on: ``LORA_BASE_MODEL``, else the generation
    role's model (on vLLM, the model it serves: ``vllm serve <model>``)."""
    s = get_settings()
    return s.lora_base_model or s.role("generation")[2]


def default_server_url() -> str:
    """The generation role's base URL (``.../v1``): where archetypes go by default."""
    return get_settings().role("generation")[1]


def _dir_size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 3)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"{path}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProvisionError(f"{path}: expected a JSON object")
    return data


def scan_archetype(folder: Path, base_model: str) -> dict[str, dict]:
    """The adapters of one archetype folder, ``{task: fields}``, validated.

    Args:
        folder: ``<root>/<archetype>``, holding ``<task>/adapter_config.json`` per task.
        base_model: every adapter's ``base_model_name_or_path`` must equal it.

    Raises:
        ProvisionError: no adapters, a folder that is no known task, a config without ``r``,
            or a base model mismatch.
    """
    if not folder.is_dir():
        raise ProvisionError(f"{folder}: not a directory")
    found: dict[str, dict] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in ADAPTER_TASKS:
            raise ProvisionError(f"{sub}: unknown adapter task {sub.name!r}; tasks are "
                                 f"{', '.join(ADAPTER_TASKS)}")
        if not (sub / ADAPTER_CONFIG).is_file():
            raise ProvisionError(f"{sub}: no {ADAPTER_CONFIG} (not a PEFT adapter)")
        cfg = _read_json(sub / ADAPTER_CONFIG)
        trained_base = cfg.get("base_model_name_or_path")
        if trained_base != base_model:
            raise ProvisionError(
                f"{sub / ADAPTER_CONFIG}: base_model_name_or_path is {trained_base!r} but the "
                f"served base model is {base_model!r}; an adapter only works on the model it "
                "was trained on")
        rank = cfg.get("r")
        if not isinstance(rank, int) or rank < 1:
            raise ProvisionError(f"{sub / ADAPTER_CONFIG}: LoRA rank 'r' missing or invalid")
        meta = _read_json(sub / ADAPTER_META) if (sub / ADAPTER_META).is_file() else {}
        found[sub.name] = {
            "path": str(sub.resolve()), "rank": rank, "size_mb": _dir_size_mb(sub),
            "base_model": trained_base, "version": str(meta.get("version", "1")),
            "trained_on": str(meta.get("trained_on", "")),
            "metrics": meta.get("metrics", {}) if isinstance(meta.get("metrics"), dict) else {},
            "mistral_model": meta.get("mistral_model"),
        }
    if not found:
        raise ProvisionError(f"{folder}: no adapters (expected <task>/{ADAPTER_CONFIG})")
    return found


def adapter_name(archetype: str, task: str, version: str) -> str:
    """The ``lora_name`` an adapter is served under: ``{archetype}-{task}-v{version}``. A new
    version gets a new name, so a server never answers with a stale copy of the old one."""
    return f"{archetype}-{task}-v{re.sub(r'[^A-Za-z0-9_.-]', '_', version)}"


def provision(s: Session, r: redis.Redis, root: Path, archetype: str, *,
              server_url: str | None = None, server_id: str = "",
              base_model: str | None = None, voice_service_url: str | None = None,
              facial_service_url: str | None = None,
              body_service_url: str | None = None) -> dict:
    """Register (or update) the chain of ``archetype`` from ``root/<archetype>`` and publish it.

    Adapters already registered for a task are replaced; tasks absent from the folder keep
    their adapter; a re-provisioned adapter is no longer broken.

    Args:
        server_url: the archetype's vLLM server, OpenAI base URL ending in ``/v1`` (default:
            the generation role's base URL); all its adapters are served there.
        base_model: the served base model (default :func:`served_base_model`).

    Returns:
        The published chain (see the module docstring).

    Raises:
        ProvisionError: see :func:`scan_archetype`; an invalid archetype name.
    """
    name = normalise(archetype) or ""
    if not NAME_RE.match(name):
        raise ProvisionError(f"invalid archetype name {archetype!r} (a-z, 0-9, _ and -)")
    base = base_model or served_base_model()
    found = scan_archetype(Path(root) / archetype, base)
    row = s.scalars(select(Archetype).where(Archetype.name == name)).one_or_none()
    if row is None:
        row = Archetype(name=name, server_url=server_url or default_server_url(),
                        server_id=server_id, base_model=base)
        s.add(row)
    else:
        row.server_url = server_url or row.server_url
        row.server_id = server_id or row.server_id
        row.base_model = base
    for field, value in (("voice_service_url", voice_service_url),
                         ("facial_service_url", facial_service_url),
                         ("body_service_url", body_service_url)):
        if value is not None:
            setattr(row, field, value)
    s.flush()
    existing = {a.task: a for a in s.scalars(select(Adapter).where(Adapter.archetype_id == row.id))}
    cleared = []
    for task, fields in found.items():
        adapter = existing.get(task) or Adapter(archetype_id=row.id, task=task)
        if adapter.name:
            cleared.append(adapter.name)
        for key, value in fields.items():
            setattr(adapter, key, value)
        adapter.name = adapter_name(name, task, fields["version"])
        adapter.broken, adapter.broken_reason = False, None
        cleared.append(adapter.name)
        s.add(adapter)
    s.flush()
    s.refresh(row)
    chain = chain_doc(row)
    publish(r, chain)
    r.hdel(rkeys.LORA_BROKEN, *cleared)
    return chain


def provision_root(s: Session, r: redis.Redis, root: Path, **kwargs) -> list[dict]:
    """:func:`provision` every archetype folder under ``root`` (all validated before any is
    registered: one bad adapter registers nothing).

    Raises:
        ProvisionError: ``root`` is no directory, holds no archetype, or one is invalid.
    """
    root = Path(root)
    if not root.is_dir():
        raise ProvisionError(f"{root}: not a directory")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise ProvisionError(f"{root}: no archetype folders")
    base = kwargs.get("base_model") or served_base_model()
    for name in names:  # validate all first
        scan_archetype(root / name, base)
    return [provision(s, r, root, name, **kwargs) for name in names]


def chain_doc(row: Archetype) -> dict:
    """The JSON-ready chain of an archetype row (the Redis document)."""
    return {
        "name": row.name, "server_url": row.server_url, "server_id": row.server_id,
        "base_model": row.base_model,
        "services": {"voice": row.voice_service_url, "facial": row.facial_service_url,
                     "body": row.body_service_url},
        "total_size_mb": round(sum(a.size_mb for a in row.adapters), 3),
        "adapters": {a.task: {"name": a.name, "path": a.path, "rank": a.rank,
                              "size_mb": a.size_mb, "base_model": a.base_model,
                              "version": a.version, "trained_on": a.trained_on,
                              "metrics": a.metrics or {}, "mistral_model": a.mistral_model}
                     for a in sorted(row.adapters, key=lambda a: a.task)},
    }


def publish(r: redis.Redis, chain: dict) -> None:
    """Write one chain to Redis (no TTL: the database is the source, :func:`publish_all`
    rebuilds)."""
    pipe = r.pipeline(transaction=True)
    pipe.set(rkeys.lora_chain(chain["name"]), json.dumps(chain))
    pipe.sadd(rkeys.LORA_CHAINS, chain["name"])
    pipe.execute()


def publish_all(s: Session, r: redis.Redis) -> int:
    """Publish every registered chain and the broken marks of the database to Redis; returns
    the number of archetypes."""
    rows = s.scalars(select(Archetype).options(selectinload(Archetype.adapters))).all()
    for row in rows:
        publish(r, chain_doc(row))
        broken = {a.name: a.broken_reason or "broken" for a in row.adapters if a.broken}
        if broken:
            r.hset(rkeys.LORA_BROKEN, mapping=broken)
    return len(rows)


def get_chain(r: redis.Redis, archetype: str) -> dict | None:
    """The published chain of ``archetype`` (one Redis GET), or None."""
    raw = r.get(rkeys.lora_chain(normalise(archetype) or ""))
    return json.loads(raw) if raw else None


def adapter_for(r: redis.Redis, archetype: str, task: str) -> dict | None:
    """The published adapter of ``archetype`` for ``task`` (with ``archetype`` and
    ``server_url`` added), or None."""
    chain = get_chain(r, archetype)
    if chain is None or task not in chain["adapters"]:
        return None
    return {**chain["adapters"][task], "archetype": chain["name"],
            "server_url": chain["server_url"]}


def list_chains(s: Session, r: redis.Redis) -> list[dict]:
    """Every registered chain from the database, with each adapter's ``broken`` state (the
    coordinator marks broken adapters in Redis; they are persisted here)."""
    marks = {k.decode(): v.decode() for k, v in r.hgetall(rkeys.LORA_BROKEN).items()}
    out = []
    for row in s.scalars(select(Archetype).options(selectinload(Archetype.adapters))
                         .order_by(Archetype.name)).all():
        for a in row.adapters:
            if a.name in marks and not a.broken:
                a.broken, a.broken_reason = True, marks[a.name]
        doc = chain_doc(row)
        for a in row.adapters:
            doc["adapters"][a.task].update(broken=a.broken, broken_reason=a.broken_reason)
        out.append(doc)
    return out


def mark_broken(r: redis.Redis, name: str, reason: str) -> None:
    """Mark an adapter broken in Redis (no SQL: the coordinator runs on the hot path);
    :func:`list_chains` persists the mark."""
    r.hset(rkeys.LORA_BROKEN, name, reason[:500])


def set_character_archetype(s: Session, r: redis.Redis, world_key: str, entry_key: str,
                            archetype: str | None) -> dict:
    """Set (or clear, with None) the archetype of a world's character, in the database and
    in the Redis hash the router reads.

    Returns:
        ``{world, npc_id, lore_entry_id, archetype, registered}`` (``registered``: a chain
        exists for it; an unregistered archetype routes to the base model).

    Raises:
        UnknownCharacter: no such world or entry.
        ValueError: the entry is not a character, or the name is invalid.
    """
    name = normalise(archetype)
    if name is not None and not NAME_RE.match(name):
        raise ValueError(f"invalid archetype name {archetype!r} (a-z, 0-9, _ and -)")
    world = s.scalars(select(World).where(World.key == world_key)).one_or_none()
    if world is None:
        raise UnknownCharacter(f"unknown world {world_key!r}")
    entry = s.scalars(select(LoreEntry).where(LoreEntry.world_id == world.id,
                                              LoreEntry.key == entry_key)).one_or_none()
    if entry is None:
        raise UnknownCharacter(f"unknown entry {entry_key!r} in world {world_key!r}")
    if entry.entity_type != "character":
        raise ValueError(f"{entry_key!r} is a {entry.entity_type}, not a character")
    entry.archetype = name
    s.flush()
    if name is None:
        r.hdel(rkeys.world_archetypes(world.id), entry.id)
    else:
        r.hset(rkeys.world_archetypes(world.id), entry.id, name)
    return {"world": world.key, "npc_id": entry.key, "lore_entry_id": entry.id,
            "archetype": name, "registered": bool(name and r.exists(rkeys.lora_chain(name)))}
