"""The predefined acceptance tests of the evaluation harness, run against a dialogue server over
its HTTP API, whichever model backend that server is configured with.

``vampire-long-conversation``: one long scripted conversation with a vampire NPC (default:
Lord Casimir Varga of the bundled Saltmere world). Questions from :data:`VAMPIRE_PROBES` are
asked once early and again at the end. The analysis model judges every reply (JSON verdict,
``evaluation/judge.py``):

- lore accuracy = replies judged ``consistent`` with the NPC's lore entry / judged replies;
- sentiment fit = replies whose judged tone is one of the archetype's tones
  (``EVAL_VAMPIRE_TONES``) / judged replies;
- consistency = repeated questions whose two replies the judge finds in agreement / judged
  pairs.

Performance gates of the conversation: p95 turn latency, error rate, peak server memory.

``zombie-horde``: ``concurrency`` dialogue requests (a horde event: 100-300) sent at once, each on
its own session, spread over the world's zombie NPCs (all characters when it has none);
p50/p95 latency at the client, error rate, throughput (successful requests per second of the
burst's wall time) and the server's peak resident memory sampled during the burst.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone

import httpx

from evaluation import judge
from evaluation.gates import EvaluationResult, apply_gates
from evaluation.perf import latency_metrics, server_rss_mb, server_rss_mb_async
from npc_memory_client import ApiError, NpcMemoryClient
from settings import get_settings

SCENARIOS = ("vampire-long-conversation", "zombie-horde")

Progress = Callable[[str, int, int], None]
"""``(stage, done, total)`` after each step; the CLI draws it as a progress bar."""

VAMPIRE_PROBES = (
    "How long have you lived in this town?",
    "Do you ever go out in daylight?",
    "What is your name, and what should I call you?",
)
"""Questions asked twice in the conversation (the consistency gate)."""

VAMPIRE_LINES = (
    "Good evening, my lord. May I speak with you for a moment?",
    "Will you join me for supper at the inn tonight?",
    "What do you think of the people of this town?",
    "Tell me about the old days. What was this place like back then?",
    "Do you know anything about the fishermen who went missing?",
    "Why must the lighthouse stay dark?",
    "Are you lonely, living up there all by yourself?",
    "What would you do if someone lit the lighthouse lamp?",
    "Do you owe anyone a debt?",
    "I brought you some garlic bread. Would you like some?",
    "Who are your friends in this town?",
    "What do you fear most in the world?",
    "The guard asked me about you today. Should I worry?",
    "Goodnight, my lord. May I come back tomorrow evening?",
)
"""The rest of the conversation, cycled as long as needed."""

HORDE_LINES = (
    "Stay back! What do you want?",
    "Did you hear that noise outside?",
    "The dead are walking the streets, have you seen them?",
    "Run, they are coming this way!",
    "Have you seen my brother anywhere?",
    "Is it safe to go down to the harbour tonight?",
)


class ScenarioError(RuntimeError):
    """The scenario could not be set up (unknown world or NPC, server unreachable, setup
    requests refused); the message says what failed. Measurements never raise this."""


def vampire_script(turns: int) -> list[tuple[str, int | None]]:
    """The conversation for ``turns`` turns (>= 2): ``[(player_text, probe index or None)]``.

    The first ``k = clamp(turns // 4, 1, 3)`` probes open the conversation, the scripted lines
    fill the middle (cycled), and the same ``k`` probes close it. 3 turns: probe 0, one
    line, probe 0 again.

    Raises:
        ValueError: ``turns < 2``.
    """
    if turns < 2:
        raise ValueError("the vampire conversation needs at least 2 turns")
    k = max(1, min(len(VAMPIRE_PROBES), turns // 4))
    middle = turns - 2 * k
    script: list[tuple[str, int | None]] = [(VAMPIRE_PROBES[i], i) for i in range(k)]
    script += [(VAMPIRE_LINES[i % len(VAMPIRE_LINES)], None) for i in range(max(0, middle))]
    script += [(VAMPIRE_PROBES[i], i) for i in range(k)]
    return script


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _tones() -> list[str]:
    return [t.strip() for t in get_settings().eval_vampire_tones.split(",") if t.strip()]


def _share(hits: int, judged: int) -> float | None:
    return hits / judged if judged else None


def run_vampire_long_conversation(server: str, api_key: str | None, *, world: str = "saltmere",
                                  npc: str = "casimir_varga", turns: int = 30,
                                  timeout: float = 300.0,
                                  progress: Progress | None = None) -> EvaluationResult:
    """Play :func:`vampire_script` with ``npc`` on ``world`` and judge it (module docstring).

    Args:
        server: the dialogue server's base URL.
        api_key: one of its ``API_KEYS`` (None for ``API_AUTH=off``).
        turns: conversation length (>= 2).
        timeout: seconds per request.

    Raises:
        ScenarioError: the session could not be opened, or ``npc`` is not a character of
            ``world``.
        ValueError: ``turns < 2``.
    """
    script = vampire_script(turns)
    started, t_start = _now(), time.perf_counter()
    tones = _tones()
    total = 2 * len(script) + len({p for _, p in script if p is not None})
    step = 0

    def tick(stage: str) -> None:
        nonlocal step
        step += 1
        if progress:
            progress(stage, step, total)

    records: list[dict] = []
    latencies: list[float] = []
    errors = 0
    rss: list[float] = []
    with NpcMemoryClient(server, api_key, timeout=timeout) as client:
        try:
            session = client.open_session(world, player_name="evaluator")
            names = {c.npc_id: c.name for c in session.characters}
            if npc not in names:
                raise ScenarioError(f"world {world!r} has no character {npc!r}; its characters: "
                                    f"{', '.join(sorted(names)) or 'none'}")
            lore = client.entry(session.session_id, npc)["lore_entry"]
        except (ApiError, httpx.HTTPError) as exc:
            raise ScenarioError(f"could not set up the conversation on {server}: {exc}") from exc
        npc_name = names[npc]
        for turn, (text, probe) in enumerate(script, 1):
            rec = {"turn": turn, "player_text": text, "probe": probe}
            t0 = time.perf_counter()
            try:
                reply = client.turn(session.session_id, npc, text)
                rec["latency_ms"] = (time.perf_counter() - t0) * 1000
                rec["npc_text"] = reply.npc_text
                latencies.append(rec["latency_ms"])
            except (ApiError, httpx.HTTPError) as exc:
                errors += 1
                rec["error"] = str(exc)[:300]
            records.append(rec)
            mb = server_rss_mb(server, api_key)
            if mb is not None:
                rss.append(mb)
            tick("conversation")

    lore_ok = tone_ok = judged = 0
    for rec in records:
        if "npc_text" in rec:
            v = judge.judge_reply(npc_name, lore["content"], rec["player_text"], rec["npc_text"])
            if v is not None:
                judged += 1
                lore_ok += v.lore == "consistent"
                tone_ok += v.tone in tones
                rec.update(lore=v.lore, tone=v.tone, reason=v.reason)
        tick("judging replies")
    pairs_ok = pairs = 0
    by_probe: dict[int, list[dict]] = {}
    for rec in records:
        if rec["probe"] is not None:
            by_probe.setdefault(rec["probe"], []).append(rec)
    for recs in by_probe.values():
        answered = [r for r in recs if "npc_text" in r]
        if len(answered) >= 2:
            v = judge.judge_consistency(npc_name, answered[0]["player_text"],
                                        answered[0]["npc_text"], answered[-1]["npc_text"])
            if v is not None:
                pairs += 1
                pairs_ok += v.agree == "yes"
                answered[-1].update(agrees_with_turn=answered[0]["turn"], agree=v.agree,
                                    agree_reason=v.reason)
        tick("judging consistency")

    metrics = {"lore_accuracy": _share(lore_ok, judged),
               "sentiment_fit": _share(tone_ok, judged),
               "consistency": _share(pairs_ok, pairs),
               "judged_replies": judged, "judged_pairs": pairs,
               "peak_memory_mb": max(rss) if rss else None,
               **latency_metrics(latencies, errors)}
    gates = apply_gates(metrics, ["lore_accuracy", "consistency", "sentiment_fit",
                                  "p95_latency_ms", "error_rate", "peak_memory_mb"])
    notes = [f"NPC {npc_name} ({npc}, archetype {lore.get('archetype')}) on world {world}; "
             f"tones that fit: {', '.join(tones)}"]
    unjudged = sum("npc_text" in r for r in records) - judged
    if unjudged:
        notes.append(f"{unjudged} replies got no valid verdict from the judge and are left out")
    return EvaluationResult(
        scenario="vampire-long-conversation", server=server, started_at=started,
        duration_s=time.perf_counter() - t_start,
        params={"world": world, "npc": npc, "turns": turns, "timeout_s": timeout},
        metrics=metrics, gates=gates, records=records, notes=notes)


async def _horde(server: str, api_key: str | None, world: str, npcs: list[str] | None,
                 concurrency: int, timeout: float, progress: Progress | None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=timeout,
                                 limits=limits) as http:
        setup = asyncio.Semaphore(16)

        async def call(method: str, path: str, **kw) -> dict:
            async with setup:
                res = await http.request(method, path, **kw)
            if res.status_code >= 400:
                raise ScenarioError(f"{method} {path}: HTTP {res.status_code}: {res.text[:300]}")
            return res.json()

        try:
            sessions = await asyncio.gather(*(
                call("POST", "/v1/sessions", json={"world": world, "player_name": f"p{i}"})
                for i in range(concurrency)))
            chars = [c["npc_id"] for c in sessions[0]["characters"]]
            notes = []
            if npcs:
                missing = sorted(set(npcs) - set(chars))
                if missing:
                    raise ScenarioError(f"world {world!r} has no character {missing}")
            else:
                sid = sessions[0]["session_id"]
                entries = await asyncio.gather(*(call("GET", f"/v1/sessions/{sid}/entries/{c}")
                                                 for c in chars))
                npcs = [c for c, e in zip(chars, entries)
                        if (e["lore_entry"].get("archetype") or "").lower() == "zombie"]
                if not npcs:
                    npcs = chars
                    notes.append(f"world {world!r} has no zombie NPC: the horde talks to all "
                                 f"{len(chars)} characters")
            if not npcs:
                raise ScenarioError(f"world {world!r} has no characters")
        except httpx.HTTPError as exc:
            raise ScenarioError(f"could not set up the horde on {server}: {exc}") from exc

        rss: list[float] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                mb = await server_rss_mb_async(http)
                if mb is not None:
                    rss.append(mb)
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

        done = 0

        async def one(i: int) -> dict:
            nonlocal done
            rec = {"request": i, "session_id": sessions[i]["session_id"],
                   "npc_id": npcs[i % len(npcs)], "player_text": HORDE_LINES[i % len(HORDE_LINES)]}
            t0 = time.perf_counter()
            try:
                res = await http.post(f"/v1/sessions/{rec['session_id']}/turns",
                                      json={"npc_id": rec["npc_id"],
                                            "player_text": rec["player_text"]})
                rec["status"] = res.status_code
                if res.status_code >= 400:
                    rec["error"] = res.text[:300]
            except httpx.HTTPError as exc:
                rec["status"] = None
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rec["latency_ms"] = (time.perf_counter() - t0) * 1000
            done += 1
            if progress:
                progress("horde requests", done, concurrency)
            return rec

        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        records = await asyncio.gather(*(one(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
        end_mb = await server_rss_mb_async(http)
        if end_mb is not None:
            rss.append(end_mb)
    return {"records": list(records), "wall_s": wall, "rss": rss, "npcs": npcs, "notes": notes}


def run_zombie_horde(server: str, api_key: str | None, *, world: str = "saltmere",
                     npcs: list[str] | None = None, concurrency: int = 100,
                     timeout: float = 300.0, progress: Progress | None = None) -> EvaluationResult:
    """Send ``concurrency`` dialogue requests at once and measure them (module docstring).

    Args:
        npcs: NPC ids to address (None: the world's zombies, else all its characters).
        concurrency: simultaneous requests (a horde event: 100-300), each on its own session.
        timeout: seconds per request; a request past it counts as an error.

    Raises:
        ScenarioError: sessions could not be opened, or an NPC is not in the world.
        ValueError: ``concurrency < 1``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    started, t_start = _now(), time.perf_counter()
    out = asyncio.run(_horde(server, api_key, world, npcs, concurrency, timeout, progress))
    records = out["records"]
    ok = [r["latency_ms"] for r in records if r["status"] is not None and r["status"] < 400]
    metrics = {**latency_metrics(ok, len(records) - len(ok), out["wall_s"]),
               "wall_s": out["wall_s"], "peak_memory_mb": max(out["rss"]) if out["rss"] else None}
    gates = apply_gates(metrics, ["p95_latency_ms", "error_rate", "throughput_rps",
                                  "peak_memory_mb"])
    return EvaluationResult(
        scenario="zombie-horde", server=server, started_at=started,
        duration_s=time.perf_counter() - t_start,
        params={"world": world, "npcs": out["npcs"], "concurrency": concurrency,
                "timeout_s": timeout},
        metrics=metrics, gates=gates, records=records, notes=out["notes"])
