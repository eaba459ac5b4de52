"""The main job: start the embedded services, import a world, play a session over HTTP, let
the asynchronous pipeline work, print what happened, and stop everything.

By default it runs on the example world the project ships (Saltmere); ``light=True`` runs on
LIGHT's ``possibly-vampires`` world with player lines from the human-written ParlAI
utterances. External services are used instead of the embedded ones where ``REDIS_URL``,
``DATABASE_URL`` or ``LLM_BASE_URL`` say so.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contract.names import Queues
from memory.importers.spec import SessionScript, WorldSpec
from npc_memory_client import NpcMemoryClient, Token
from settings import ROOT, get_settings
from workers.stack import EmbeddedStack, StackOptions

SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))


@dataclass
class DemoOptions:
    """What to run: the world, how many turns, where to write, how long to wait."""

    light: bool = False
    light_world: Path = SHARED / "data" / "light" / "possibly-vampires.json"
    parlai_dir: Path = SHARED / "data" / "light" / "parlai_fixtures"
    turns: int = 8
    data_dir: Path = field(default_factory=lambda: get_settings().data_dir / "demo")
    tick_seconds: float = 20.0
    drain_timeout: float = 600.0
    split_llm: bool | None = None
    summary_path: Path | None = None
    console: Console = field(default_factory=Console)


def load_inputs(opts: DemoOptions) -> tuple[WorldSpec, SessionScript]:
    """The world and the session script of this run."""
    if opts.light:
        from memory.importers.light import light_session_script, load_light_world, load_parlai_utterances

        world = load_light_world(opts.light_world)
        lines = load_parlai_utterances(opts.parlai_dir)
        return world, light_session_script(world, lines, opts.turns)
    from memory.importers.examples import load_example

    world, script = load_example()
    return world, SessionScript(world_key=script.world_key, turns=script.turns[: opts.turns])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_demo(opts: DemoOptions) -> dict:
    """Run the whole demo on the embedded stack (``workers.stack``); returns the summary dict
    (also printed, and written as JSON).

    Raises:
        RuntimeError / TimeoutError: a process died or the pipeline did not drain in time.
    """
    world, script = load_inputs(opts)
    stack_opts = StackOptions(data_dir=opts.data_dir, worlds=[world], split_llm=opts.split_llm,
                              tick_seconds=opts.tick_seconds)
    with opts.console.status("starting embedded services") as status:
        stack = EmbeddedStack(stack_opts, status=status.update)
        try:
            stack.start()
        except BaseException:
            stack.stop()
            raise
    try:
        return _play_and_report(opts, stack.supervisor, stack.base_url, stack.api_key, world,
                                script, stack.pids())
    finally:
        with opts.console.status("stopping processes"):
            stack.stop()


def _wait_for(opts: DemoOptions, sup, predicate, label: str) -> None:
    """Show a live status until ``predicate()`` holds."""
    deadline = time.monotonic() + opts.drain_timeout
    with opts.console.status(label):
        while time.monotonic() < deadline:
            sup.check()
            if predicate():
                return
            time.sleep(0.5)
    raise TimeoutError(f"{label}: not done within {opts.drain_timeout:.0f} s")


def _drain(opts: DemoOptions, sup, r, session_id: str, label: str) -> None:
    """Show live queue status until nothing of the session is queued or running (2 s)."""
    from memory.db import session_scope
    from memory.report import pending_tasks
    from workers.queues import queue_lengths

    deadline = time.monotonic() + opts.drain_timeout
    quiet_since = None
    with opts.console.status(label) as status:
        while time.monotonic() < deadline:
            sup.check()
            lengths = queue_lengths(r)
            unacked = int(r.hlen("unacked"))
            with session_scope() as db:
                running = pending_tasks(db, [session_id])
            status.update(f"{label}: queued " + " ".join(f"{q}={n}" for q, n in lengths.items() if n)
                          + f" in-flight={unacked} running={running}")
            if not any(lengths.values()) and unacked == 0 and running == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 2.0:
                    return
            else:
                quiet_since = None
            time.sleep(0.5)
    raise TimeoutError(f"{label}: pipeline did not drain within {opts.drain_timeout:.0f} s")


def _play_and_report(opts: DemoOptions, sup, web: str, api_key: str, world: WorldSpec,
                     script: SessionScript, pids: list[int]) -> dict:
    from memory import nearline
    from memory.db import session_scope
    from memory.report import (coalesced_updates, creation_stats, session_summary, task_counts,
                               tick_results)

    console = opts.console
    r = nearline.get_redis()
    client = httpx.Client(base_url=web, timeout=300, headers={
        "Authorization": f"Bearer {api_key}"} if api_key else {})
    res = client.post("/v1/sessions", json={"world": world.key, "player_name": "demo player"})
    res.raise_for_status()
    session_id = res.json()["session_id"]
    game = NpcMemoryClient(web, api_key or None, timeout=300)
    turns = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("playing turns", total=len(script.turns))
        for t in script.turns:  # streamed, as a game shows a reply: first words first
            t0 = time.perf_counter()
            first = None
            for event in game.turn_stream(session_id, t.npc_key, t.player_text):
                if isinstance(event, Token):
                    first = first or time.perf_counter()
                else:
                    body = event.model_dump()
            done = time.perf_counter()
            body["client_ms"] = (done - t0) * 1000
            body["client_ttft_ms"] = ((first or done) - t0) * 1000
            body["player_text"] = t.player_text
            turns.append(body)
            progress.update(bar, advance=1, description=f"playing turns ({body['npc_name'][:24]})")

    def tick_done() -> bool:
        with session_scope() as db:
            return any(x["session_id"] == session_id for x in tick_results(db))

    _wait_for(opts, sup, tick_done, "waiting for a world tick to simulate the session")
    sup.stop("beat")
    _drain(opts, sup, r, session_id, "draining the queues")

    with session_scope() as db:
        summary = session_summary(db, session_id)
        counts = task_counts(db, [session_id])
        coalescing = coalesced_updates(db, [session_id])
        creations = creation_stats(db, [session_id])
        ticks = [x for x in tick_results(db) if x["session_id"] == session_id]
    health = client.get("/healthz").json()
    example = None
    if summary["revisions"]:
        rev = summary["revisions"][-1]
        q = rev["title"]
        hits = client.get(f"/v1/sessions/{session_id}/search", params={"q": q, "k": 3}).json()["hits"]
        example = {"query": q, "top3": [h["title"] if h["kind"] == "document" else h["text"]
                                         for h in hits]}
    latencies = [t["latency_ms"] for t in turns]
    ttfts = [t["client_ttft_ms"] for t in turns]
    out = {
        "world": world.key,
        "session_id": session_id,
        "turns": [{"npc": t["npc_name"], "player": t["player_text"], "npc_text": t["npc_text"],
                   "latency_ms": round(t["latency_ms"], 1),
                   "ttft_ms": round(t["client_ttft_ms"], 1), "retrieved": t["retrieved"]}
                  for t in turns],
        "turns_served": len(turns),
        "latency_ms": {"p50": round(_pct(latencies, 50), 1), "p95": round(_pct(latencies, 95), 1)},
        "ttft_ms": {"p50": round(_pct(ttfts, 50), 1), "p95": round(_pct(ttfts, 95), 1)},
        "tasks": counts,
        "coalescing": coalescing,
        "notes_written": summary["notes"],
        "revisions": len(summary["revisions"]),
        "note_example": _note_example(summary["revisions"]),
        "entities_created": summary["created"],
        "creation_dedup": creations,
        "archived_turns": summary["archived_turns"],
        "vectors_in_index": health["vectors"],
        "retrieval_example": example,
        "world_ticks": ticks,
        "pids": pids,
    }
    _print_summary(console, out)
    path = opts.summary_path or (opts.data_dir / "summary.json")
    path.write_text(json.dumps(out, indent=2, default=str))
    console.print(f"summary written to {path}")
    return out


def _note_example(revisions: list[dict]) -> dict | None:
    if not revisions:
        return None
    best = max(revisions, key=lambda r: (r["version"], len(r["after"])))
    return {k: best[k] for k in ("title", "version", "cause", "event", "before", "after")}


def _print_summary(console: Console, out: dict) -> None:
    console.rule(f"[bold]Demo summary: world {out['world']}")
    for t in out["turns"]:
        console.print(f"[cyan]player -> {t['npc']}:[/] {t['player']}")
        console.print(f"[green]{t['npc']}:[/] {t['npc_text']}  [dim]({t['latency_ms']} ms, "
                      f"first words after {t['ttft_ms']} ms)[/]")
        if t["retrieved"]:  # what memory put in front of the model for this reply
            console.print("  [dim]retrieved for this reply:[/] " + " | ".join(
                str(x)[:90] for x in t["retrieved"]))
    console.print(f"turns served: {out['turns_served']}   dialogue latency p50 "
                  f"{out['latency_ms']['p50']} ms, p95 {out['latency_ms']['p95']} ms; "
                  f"first words (streamed) p50 {out['ttft_ms']['p50']} ms, "
                  f"p95 {out['ttft_ms']['p95']} ms")
    table = Table(title="tasks per queue")
    for col in ("queue", "succeeded", "dead-lettered", "retried", "pending"):
        table.add_column(col)
    for q in (q.value for q in Queues):
        c = out["tasks"].get(q, {})
        table.add_row(q, *(str(c.get(k, 0)) for k in ("succeeded", "dead",
                                                      "retried", "pending")))
    console.print(table)
    c = out["coalescing"]
    console.print(f"note updates: {c['update_tasks']}, folded into another rewrite: {c['coalesced']} "
                  f"(model calls saved)")
    console.print(f"session notes written: {out['notes_written']} ({out['revisions']} revisions); "
                  f"turns archived: {out['archived_turns']}")
    ex = out["note_example"]
    if ex:
        console.print(f"[bold]note of {ex['title']}[/] (version {ex['version']}, {ex['cause']}) "
                      f"after event: {ex['event']}")
        console.print(f"  before: {ex['before'] or '(empty)'}")
        console.print(f"  after:  {ex['after']}")
    console.print(f"entities created: {len(out['entities_created'])} "
                  + ", ".join(f"{e['title']} ({e['entity_type']})" for e in out["entities_created"]))
    d = out["creation_dedup"]
    console.print(f"creations matched to existing entries: {sum(d['matched'].values())} "
                  f"{d['matched'] or ''} (duplicate rate {d['duplicate_rate']:.0%})")
    console.print(f"vectors in the index: {out['vectors_in_index']}")
    if out["retrieval_example"]:
        ex = out["retrieval_example"]
        console.print(f"retrieval: {ex['query']!r} -> {ex['top3']}")
    console.print(f"world ticks run: {len(out['world_ticks'])}")
    for t in out["world_ticks"]:
        console.print(f"  tick {t['tick'][:18]} ({t.get('elapsed', '?')}, now "
                      f"{t.get('game_time', '?')}): {len(t.get('npcs', []))} NPCs, "
                      f"{t.get('updates', 0)} update_note tasks, {t.get('tokens', 0)} tokens "
                      f"(budget {t.get('token_budget', '?')}), {len(t.get('waiting', []))} waiting")
        for n in t.get("npcs", []):
            console.print(f"    {n['title']} (score {n['score']}, {n['why']}): "
                          f"{t.get('did', {}).get(n['key'], '-')}")
