"""Capacity planner for archetype model chains: how many model servers, and which chains on each.

A model server holds one shared base model, an inference engine, the LoRA adapters of the
archetype chains it hosts, and the KV cache of the NPCs it is serving. The golden rule: an
archetype's chain (its adapters: personality, dialogue_style, action_policy,
emotional_response, world_knowledge, social_dynamics, goal_prioritization) stays on one server,
so a chain is an indivisible item when the chains are packed onto servers.

:func:`plan` packs the chains into *server layouts* by first-fit decreasing (largest chain
first, each into the first layout with room), then sizes each layout's fleet for its share of
the NPCs: a server runs at most ``server_inferences_per_s`` inferences per second
(throughput) and holds the KV cache of at most ``free memory / kv_cache_gb_per_npc``
concurrent NPCs (memory); the smaller of the two binds.

Units: memory in GB (10^9 bytes), adapter sizes in MB (10^6 bytes), rates per second. Pure
arithmetic: no I/O, no settings.

Worked example: 10,000 NPCs x 0.125 actions/s x 7 inferences per action = 8,750
inferences/s; at 50 inferences/s per server that is 175 servers. A 70B deployment (4-bit base
21 GB + engine 1.6 GB + 7 adapters x 200 MB = 24 GB on a 24 GB GPU) leaves no room for a KV
cache (~5 GB per 50 concurrent NPCs in the 7B estimate below), and the 1.4 GB left for
adapters holds 7 of 200 MB, not 35: with those numbers one server holds one chain, not five.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

ADAPTER_TASKS = ("personality", "dialogue_style", "action_policy", "emotional_response",
                 "world_knowledge", "social_dynamics", "goal_prioritization")
"""The seven adapters of an archetype chain."""

DEFAULT_ARCHETYPES = ("vampire", "werewolf", "zombie", "ghoul", "lich")
"""The five default archetypes."""

_EPS = 1e-9


def _ceil(x: float) -> int:
    """``ceil`` that ignores float noise (175.00000000000003 -> 175)."""
    return math.ceil(x - _EPS * max(1.0, abs(x)))


class DoesNotFit(ValueError):
    """The inputs cannot be served at all: the base model and engine exceed the GPU, or an
    archetype's chain (with the KV cache reserve) is too big for one server. The message
    names the archetype and the numbers."""


@dataclass(frozen=True)
class Archetype:
    """One archetype's chain.

    Attributes:
        name: e.g. ``vampire``.
        adapter_count: LoRA adapters in its chain (a complete chain: 7).
        adapter_size_mb: size of one adapter in MB (typically ~100-200); with
            ``adapter_sizes_mb`` given (sizes read from files) this is their mean.
        share: share of the NPCs that are of this archetype, 0..1 (None: an equal split of
            what the archetypes with a share leave).
        adapter_sizes_mb: the individual adapter sizes in MB when known (from files).
    """

    name: str
    adapter_count: int = 7
    adapter_size_mb: float = 200.0
    share: float | None = None
    adapter_sizes_mb: tuple[float, ...] = ()

    @property
    def chain_gb(self) -> float:
        """Memory of the whole chain in GB."""
        if self.adapter_sizes_mb:
            return sum(self.adapter_sizes_mb) / 1000.0
        return self.adapter_count * self.adapter_size_mb / 1000.0


@dataclass(frozen=True)
class CapacityInputs:
    """What :func:`plan` needs. Defaults: a 7B deployment on one 24 GB GPU (g5.2xlarge:
    base 4-bit AWQ 3.5 GB; ~100 MB adapters; engine 1.6 GB; KV cache 5 GB per 50 NPCs) and the
    default traffic (10,000 NPCs, an action every 8 s, one inference per adapter = 7 per action,
    50 inferences/s per server with batching).

    Attributes:
        archetypes: the chains to host (names unique).
        base_params_b: base model parameters in billions.
        quant_bits: bits per weight of the quantized base model (4, 8, 16).
        base_model_gb: the base model's memory in GB; None: ``base_params_b * quant_bits / 8``.
        engine_overhead_gb: inference engine (vLLM/TensorRT-LLM) overhead per server, GB.
        kv_cache_gb_per_npc: KV cache per concurrent NPC, GB.
        kv_reserve_npcs: KV cache room every server keeps at least (NPCs) when chains are
            packed; a chain that does not fit beside it is :class:`DoesNotFit`.
        gpu_memory_gb: GPU memory per server, GB.
        target_npcs: concurrent NPCs to serve.
        actions_per_npc_s: actions per NPC per second (0.125 = one every 8 s).
        inferences_per_action: model inferences per action (one per adapter: 7).
        server_inferences_per_s: inferences per second one server sustains (batched).
    """

    archetypes: tuple[Archetype, ...] = tuple(Archetype(n, 7, 100.0) for n in DEFAULT_ARCHETYPES)
    base_params_b: float = 7.0
    quant_bits: float = 4.0
    base_model_gb: float | None = None
    engine_overhead_gb: float = 1.6
    kv_cache_gb_per_npc: float = 0.1
    kv_reserve_npcs: int = 1
    gpu_memory_gb: float = 24.0
    target_npcs: int = 10_000
    actions_per_npc_s: float = 0.125
    inferences_per_action: float = 7.0
    server_inferences_per_s: float = 50.0

    @property
    def base_gb(self) -> float:
        """The base model's memory in GB (given, or parameters x bits / 8)."""
        if self.base_model_gb is not None:
            return self.base_model_gb
        return self.base_params_b * self.quant_bits / 8.0


@dataclass(frozen=True)
class ServerGroup:
    """Identical servers hosting the same chains (one layout of the packing).

    Attributes:
        layout: 1-based layout number (order of the packing).
        archetypes: the archetypes whose whole chains this layout hosts.
        first_server, servers: the servers ``first_server .. first_server + servers - 1``.
        npcs: concurrent NPCs this group serves (its archetypes' shares of the target).
        inferences_per_s: the inference demand of those NPCs.
        base_gb, engine_gb, adapters_gb: memory per server, GB.
        kv_capacity_gb: memory left per server for the KV cache, GB.
        kv_used_gb: KV cache per server at this group's load, GB.
        npcs_per_server_memory: NPCs one server's KV room holds (None: KV cache of size 0).
        npcs_per_server_throughput: NPCs one server serves at full throughput.
        servers_for_throughput, servers_for_memory: servers each constraint alone needs.
        binding: ``throughput`` or ``memory``: the constraint that sets ``servers``.
    """

    layout: int
    archetypes: list[str]
    first_server: int
    servers: int
    npcs: float
    inferences_per_s: float
    base_gb: float
    engine_gb: float
    adapters_gb: float
    kv_capacity_gb: float
    kv_used_gb: float
    npcs_per_server_memory: int | None
    npcs_per_server_throughput: float
    servers_for_throughput: int
    servers_for_memory: int
    binding: str

    @property
    def used_gb(self) -> float:
        """Memory used per server at this group's load, GB."""
        return self.base_gb + self.engine_gb + self.adapters_gb + self.kv_used_gb


@dataclass
class CapacityPlan:
    """:func:`plan`'s answer.

    Attributes:
        fits: every chain is placed whole on a server (always true on a returned plan;
            :func:`plan` raises :class:`DoesNotFit` otherwise).
        servers_needed: total servers.
        inferences_per_s: total inference demand (NPCs x actions/s x inferences/action).
        servers_for_throughput_only: ``ceil(inferences_per_s / server_inferences_per_s)``,
            the throughput-only count (memory ignored).
        groups: one :class:`ServerGroup` per layout.
        binding: ``memory`` if any group is memory-bound, else ``throughput``.
        chain_gb: each archetype's chain size, GB.
        inputs: the inputs, as a dict.
    """

    fits: bool
    servers_needed: int
    inferences_per_s: float
    servers_for_throughput_only: int
    groups: list[ServerGroup]
    binding: str
    chain_gb: dict[str, float]
    inputs: dict = field(default_factory=dict)

    def assignment(self) -> dict[str, list[int]]:
        """``{archetype: [first_server, last_server]}`` (1-based, inclusive)."""
        out = {}
        for g in self.groups:
            for name in g.archetypes:
                out[name] = [g.first_server, g.first_server + g.servers - 1]
        return out

    def to_dict(self) -> dict:
        """JSON-ready dict (what ``plan-capacity --json`` prints)."""
        groups = []
        for g in self.groups:
            d = asdict(g)
            d["used_gb"] = round(g.used_gb, 6)
            groups.append(d)
        return {"fits": self.fits, "servers_needed": self.servers_needed,
                "inferences_per_s": self.inferences_per_s,
                "servers_for_throughput_only": self.servers_for_throughput_only,
                "binding": self.binding, "chain_gb": self.chain_gb,
                "assignment": self.assignment(), "groups": groups, "inputs": self.inputs}


def _shares(archetypes: tuple[Archetype, ...]) -> dict[str, float]:
    given = {a.name: a.share for a in archetypes if a.share is not None}
    for name, s in given.items():
        if s < 0 or s > 1:
            raise ValueError(f"archetype {name!r}: share {s} is not in 0..1")
    rest = [a.name for a in archetypes if a.share is None]
    left = 1.0 - sum(given.values())
    if rest:
        if left < -_EPS:
            raise ValueError(f"archetype shares sum to {sum(given.values()):.4g} > 1")
        return {**given, **{n: max(0.0, left) / len(rest) for n in rest}}
    if abs(left) > 1e-6:
        raise ValueError(f"archetype shares sum to {sum(given.values()):.4g}; they must sum "
                         "to 1 (or leave some unset to split the rest equally)")
    return given


def _validate(inp: CapacityInputs) -> None:
    if not inp.archetypes:
        raise ValueError("no archetypes given")
    names = [a.name for a in inp.archetypes]
    if len(set(names)) != len(names):
        raise ValueError(f"archetype names are not unique: {names}")
    for a in inp.archetypes:
        if a.adapter_count < 1 or a.adapter_size_mb < 0:
            raise ValueError(f"archetype {a.name!r}: needs >= 1 adapter and a size >= 0 MB")
    positive = {"gpu_memory_gb": inp.gpu_memory_gb, "actions_per_npc_s": inp.actions_per_npc_s,
                "inferences_per_action": inp.inferences_per_action,
                "server_inferences_per_s": inp.server_inferences_per_s}
    for name, v in positive.items():
        if not v > 0:
            raise ValueError(f"{name} must be > 0 (got {v})")
    non_negative = {"base_gb": inp.base_gb, "engine_overhead_gb": inp.engine_overhead_gb,
                    "kv_cache_gb_per_npc": inp.kv_cache_gb_per_npc,
                    "kv_reserve_npcs": inp.kv_reserve_npcs, "target_npcs": inp.target_npcs}
    for name, v in non_negative.items():
        if v < 0:
            raise ValueError(f"{name} must be >= 0 (got {v})")


def pack_chains(chains: dict[str, float], capacity_gb: float) -> list[list[str]]:
    """First-fit decreasing: chains (``{name: GB}``) into layouts of ``capacity_gb`` each.

    Chains are taken largest first (ties by name); each goes whole into the first layout
    with room, or opens a new one. A chain is never split (golden rule).

    Raises:
        DoesNotFit: a chain is larger than ``capacity_gb``.
    """
    layouts: list[list[str]] = []
    free: list[float] = []
    for name in sorted(chains, key=lambda n: (-chains[n], n)):
        size = chains[name]
        if size > capacity_gb + _EPS:
            raise DoesNotFit(f"archetype {name!r}: its chain needs {size:.3f} GB but a server "
                             f"has {max(capacity_gb, 0):.3f} GB for adapters")
        for i, room in enumerate(free):
            if size <= room + _EPS:
                layouts[i].append(name)
                free[i] -= size
                break
        else:
            layouts.append([name])
            free.append(capacity_gb - size)
    return layouts


def plan(inp: CapacityInputs) -> CapacityPlan:
    """Plan the servers for ``inp`` (see the module docstring for the model).

    Every layout gets at least one server, so every chain is hosted somewhere even when its
    share of NPCs is 0.

    Raises:
        DoesNotFit: base model + engine (+ the KV reserve) exceed the GPU, or a chain is too
            big for one server beside them; the message says which and by how much.
        ValueError: invalid inputs (non-positive rates, duplicate names, shares not summing
            to 1).
    """
    _validate(inp)
    base, engine, kv = inp.base_gb, inp.engine_overhead_gb, inp.kv_cache_gb_per_npc
    reserve = inp.kv_reserve_npcs * kv
    room = inp.gpu_memory_gb - base - engine - reserve
    if room < -_EPS:
        raise DoesNotFit(f"base model {base:.3f} GB + engine {engine:.3f} GB + KV reserve "
                         f"{reserve:.3f} GB ({inp.kv_reserve_npcs} NPCs) exceed the GPU's "
                         f"{inp.gpu_memory_gb:.3f} GB")
    chains = {a.name: a.chain_gb for a in inp.archetypes}
    try:
        layouts = pack_chains(chains, room)
    except DoesNotFit as exc:
        raise DoesNotFit(f"{exc} (GPU {inp.gpu_memory_gb:.3f} GB - base model {base:.3f} GB - "
                         f"engine {engine:.3f} GB - KV reserve {reserve:.3f} GB for "
                         f"{inp.kv_reserve_npcs} NPCs); the golden rule keeps a chain on one "
                         "server: use a larger GPU, a smaller or more quantized base model, or "
                         "smaller adapters") from None
    shares = _shares(inp.archetypes)
    per_npc_ips = inp.actions_per_npc_s * inp.inferences_per_action
    npcs_thr = inp.server_inferences_per_s / per_npc_ips
    groups: list[ServerGroup] = []
    first = 1
    for i, names in enumerate(layouts, 1):
        adapters = sum(chains[n] for n in names)
        kv_cap = max(0.0, inp.gpu_memory_gb - base - engine - adapters)
        npcs = inp.target_npcs * sum(shares[n] for n in names)
        ips = npcs * per_npc_ips
        s_thr = _ceil(ips / inp.server_inferences_per_s)
        if kv > 0:
            npcs_mem: int | None = int(math.floor(kv_cap / kv + _EPS))
            s_mem = _ceil(npcs / npcs_mem)
        else:
            npcs_mem, s_mem = None, 0
        servers = max(1, s_thr, s_mem)
        binding = "memory" if s_mem > s_thr else "throughput"
        groups.append(ServerGroup(
            layout=i, archetypes=names, first_server=first, servers=servers, npcs=npcs,
            inferences_per_s=ips, base_gb=base, engine_gb=engine, adapters_gb=adapters,
            kv_capacity_gb=kv_cap, kv_used_gb=min(kv_cap, kv * npcs / servers),
            npcs_per_server_memory=npcs_mem, npcs_per_server_throughput=npcs_thr,
            servers_for_throughput=s_thr, servers_for_memory=s_mem, binding=binding))
        first += servers
    total_ips = inp.target_npcs * per_npc_ips
    inputs = asdict(inp)
    inputs["base_gb"] = base
    return CapacityPlan(
        fits=True, servers_needed=sum(g.servers for g in groups), inferences_per_s=total_ips,
        servers_for_throughput_only=_ceil(total_ips / inp.server_inferences_per_s),
        groups=groups, binding="memory" if any(g.binding == "memory" for g in groups)
        else "throughput", chain_gb=chains, inputs=inputs)
