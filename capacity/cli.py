"""``npc-memory plan-capacity``: the capacity planner on the command line (registered by
``workers/cli/``). Prints a rich table, or the plan as JSON with ``--json``; exit status 1
with a message when the chains cannot be hosted (or the inputs are invalid)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import typer

from capacity.planner import DEFAULT_ARCHETYPES, Archetype, CapacityInputs, CapacityPlan, DoesNotFit

_D = CapacityInputs()


def plan_capacity(
    archetypes_file: Path | None = typer.Option(
        None, "--archetypes-file", exists=True, dir_okay=False,
        help="YAML/JSON file: archetypes (name, adapters, adapter_size_mb, share) and optionally "
             "any other input by name"),
    adapters_dir: Path | None = typer.Option(
        None, "--adapters-dir", exists=True, file_okay=False,
        help="directory of PEFT adapters <archetype>/<adapter>/adapter_model.*: sizes read "
             "from the files"),
    archetypes: str = typer.Option(",".join(DEFAULT_ARCHETYPES),
                                   help="comma-separated archetype names (no file given)"),
    adapters_per_archetype: int = typer.Option(7, min=1, help="adapters per chain (no file)"),
    adapter_size_mb: float = typer.Option(100.0, min=0, help="MB per adapter (no file)"),
    base_params_b: float | None = typer.Option(None, help=f"base model parameters, billions "
                                               f"(default {_D.base_params_b})"),
    quant_bits: float | None = typer.Option(None, help=f"bits per base weight (default "
                                            f"{_D.quant_bits})"),
    base_model_gb: float | None = typer.Option(None, help="base model memory in GB "
                                               "(overrides parameters x bits / 8)"),
    engine_overhead_gb: float | None = typer.Option(
        None, help=f"inference engine overhead per server, GB (default {_D.engine_overhead_gb})"),
    kv_cache_gb_per_npc: float | None = typer.Option(
        None, help=f"KV cache per concurrent NPC, GB (default {_D.kv_cache_gb_per_npc})"),
    kv_reserve_npcs: int | None = typer.Option(
        None, help=f"KV room every server keeps, NPCs (default {_D.kv_reserve_npcs})"),
    gpu_memory_gb: float | None = typer.Option(
        None, help=f"GPU memory per server, GB (default {_D.gpu_memory_gb})"),
    target_npcs: int | None = typer.Option(None, help=f"concurrent NPCs (default "
                                           f"{_D.target_npcs})"),
    actions_per_npc_s: float | None = typer.Option(
        None, help=f"actions per NPC per second (default {_D.actions_per_npc_s})"),
    inferences_per_action: float | None = typer.Option(
        None, help=f"inferences per action (default {_D.inferences_per_action})"),
    server_inferences_per_s: float | None = typer.Option(
        None, help=f"inferences/s one server sustains (default {_D.server_inferences_per_s})"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Plan model servers for archetype chains: whether the chains fit, how many servers a
    target of concurrent NPCs needs, and which archetypes go on which servers (first-fit
    decreasing; a chain never leaves its server)."""
    from capacity.inputs import load_inputs_file, read_adapter_dir
    from capacity.planner import plan

    try:
        given: dict = {}
        if archetypes_file is not None:
            archs, given = load_inputs_file(archetypes_file)
        else:
            names = [n.strip() for n in archetypes.split(",") if n.strip()]
            archs = [Archetype(n, adapters_per_archetype, adapter_size_mb) for n in names]
        if adapters_dir is not None:
            shares = {a.name: a.share for a in archs if a.share is not None}
            archs = read_adapter_dir(adapters_dir, shares)
        options = {"base_params_b": base_params_b, "quant_bits": quant_bits,
                   "base_model_gb": base_model_gb, "engine_overhead_gb": engine_overhead_gb,
                   "kv_cache_gb_per_npc": kv_cache_gb_per_npc, "kv_reserve_npcs": kv_reserve_npcs,
                   "gpu_memory_gb": gpu_memory_gb, "target_npcs": target_npcs,
                   "actions_per_npc_s": actions_per_npc_s,
                   "inferences_per_action": inferences_per_action,
                   "server_inferences_per_s": server_inferences_per_s}
        given.update({k: v for k, v in options.items() if v is not None})
        known = {f.name for f in fields(CapacityInputs)}
        inputs = replace(CapacityInputs(), archetypes=tuple(archs),
                         **{k: v for k, v in given.items() if k in known})
        result = plan(inputs)
    except DoesNotFit as exc:
        _fail(as_json, f"chains do not fit: {exc}")
    except ValueError as exc:
        _fail(as_json, f"error: {exc}")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_plan(result)


def _fail(as_json: bool, message: str) -> None:
    if as_json:
        typer.echo(json.dumps({"fits": False, "error": message}))
    else:
        typer.echo(message, err=True)
    raise typer.Exit(1)


def print_plan(p: CapacityPlan) -> None:
    """Print ``p`` as rich tables: the summary, then one row per server layout."""
    from rich.console import Console
    from rich.table import Table

    inp = p.inputs
    console = Console()
    console.print(
        f"[bold]chains fit[/bold]: yes, {len(p.chain_gb)} chains on {len(p.groups)} server "
        f"layout(s) (golden rule: a chain stays on one server)\n"
        f"demand: {inp['target_npcs']} NPCs x {inp['actions_per_npc_s']} actions/s x "
        f"{inp['inferences_per_action']} inferences/action = {p.inferences_per_s:g} "
        f"inferences/s; throughput alone needs {p.servers_for_throughput_only} servers at "
        f"{inp['server_inferences_per_s']:g}/s\n"
        f"[bold]servers needed: {p.servers_needed}[/bold] (binding constraint: {p.binding})")
    t = Table(title="which archetypes go on which servers")
    for col in ("layout", "servers", "archetypes", "NPCs", "inferences/s", "binding"):
        t.add_column(col, justify="left" if col == "archetypes" else "right")
    for g in p.groups:
        last = g.first_server + g.servers - 1
        t.add_row(str(g.layout), f"{g.servers} (#{g.first_server}-{last})",
                  ", ".join(g.archetypes), f"{g.npcs:g}", f"{g.inferences_per_s:g}", g.binding)
    console.print(t)
    m = Table(title="memory per server, GB; NPCs per server by memory and by throughput")
    for col in ("layout", "base", "engine", "adapters", "KV room", "KV used", "total",
                "NPCs mem", "NPCs thr"):
        m.add_column(col, justify="right")
    for g in p.groups:
        m.add_row(str(g.layout), f"{g.base_gb:.2f}", f"{g.engine_gb:.2f}", f"{g.adapters_gb:.2f}",
                  f"{g.kv_capacity_gb:.2f}", f"{g.kv_used_gb:.2f}", f"{g.used_gb:.2f}",
                  "-" if g.npcs_per_server_memory is None else str(g.npcs_per_server_memory),
                  f"{g.npcs_per_server_throughput:.1f}")
    console.print(m)
