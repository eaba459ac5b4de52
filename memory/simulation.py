"""Off-screen world simulation: which NPCs a tick simulates, and on what budget.

Peers that simulate (Generative Agents, AI Town) step every agent every tick; here a tick
only simulates the characters that matter, within a budget:

- candidates are the session's world characters (canon, or created in this session) that
  were not in the session's last K turns (gossip the simulation recorded does not count);
- each is scored ``w_p * open promises + w_r * relationship strength + w_m * log(1 + mentions)
  + w_s * staleness``, where promises and relationship strength come from the relationship
  card (``memory.cards`` when present; 0 otherwise), mentions count the NPC's name in recent
  turns and in the session notes of the NPCs seen in them, and staleness is the time since
  the NPC was last simulated (Redis sorted set ``session:{id}:simulated``) over a day,
  capped at 1 (never simulated: 1);
- the best ``max_npcs`` are taken, ties by lore entry id; the others wait for a later tick.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from memory import keys as rkeys
from memory import nearline
from memory.scope import offscreen_characters
from models import LoreEntry

MENTION_WINDOW = 12
"""Turns searched for mentions."""
STALE_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class Weights:
    """Ranking weights (settings ``RANK_WEIGHT_*``)."""

    promises: float = 3.0
    relationship: float = 1.0
    mentions: float = 1.0
    staleness: float = 1.0

    @classmethod
    def from_settings(cls, s) -> Weights:
        return cls(s.rank_weight_promises, s.rank_weight_relationship, s.rank_weight_mentions,
                   s.rank_weight_staleness)


@dataclass
class Candidate:
    """An off-screen character with its score and the signals behind it (``why``:
    ``{promises, relationship, mentions, hours_since_simulated}``)."""

    entry: LoreEntry
    score: float
    why: dict = field(default_factory=dict)

    def trace(self) -> dict:
        """JSON-ready: key, title, score and why."""
        return {"key": self.entry.key, "title": self.entry.title, "score": round(self.score, 3),
                "why": self.why}


def card_signals(r, session_id: str, entry_id: int) -> tuple[int, float]:
    """``(open promises, relationship strength in [0, 1])`` between the player and an NPC,
    from the relationship card; ``(0, 0.0)`` when there is none."""
    try:
        from memory import cards
    except ImportError:  # cards arrive with the memory-tiers work
        return 0, 0.0
    return cards.simulation_signals(r, session_id, entry_id)


def _mentions(name: str, texts: list[str]) -> int:
    words = [w for w in re.findall(r"[a-z']+", name.lower()) if len(w) > 2]
    if not words:
        return 0
    pattern = re.compile(r"\b" + r"\s+".join(map(re.escape, words)) + r"\b")
    return sum(len(pattern.findall(t.lower())) for t in texts)


def rank_candidates(session: Session, r, world_id: int, session_id: str, recent_k: int,
                    weights: Weights, now: float | None = None) -> list[Candidate]:
    """Every off-screen character of the session, best first (see the module's docstring)."""
    now = time.time() if now is None else now
    window = nearline.recent_turns(r, session_id, max(recent_k, MENTION_WINDOW))
    # a told turn (gossip) happened off-screen: its listener is not on screen for it
    on_screen = {t["npc_entry_id"] for t in window[-recent_k:]
                 if t.get("kind") != "told"} if recent_k > 0 else set()
    candidates = offscreen_characters(session, world_id, session_id, on_screen)
    if not candidates:
        return []
    seen_ids = sorted({t["npc_entry_id"] for t in window})
    texts = [f"{t['player_text']} {t['npc_text']}" for t in window]
    texts += [nearline.get_note(r, session_id, i) for i in seen_ids]
    last = r.zmscore(rkeys.simulated(session_id), [str(c.id) for c in candidates])
    ranked = []
    for c, at in zip(candidates, last):
        promises, relationship = card_signals(r, session_id, c.id)
        mentions = _mentions(c.title, texts)
        since = None if at is None else max(0.0, now - at)
        staleness = 1.0 if since is None else min(1.0, since / STALE_AFTER_S)
        score = (weights.promises * promises + weights.relationship * relationship
                 + weights.mentions * math.log1p(mentions) + weights.staleness * staleness)
        ranked.append(Candidate(c, score, {
            "promises": promises, "relationship": round(relationship, 3), "mentions": mentions,
            "hours_since_simulated": None if since is None else round(since / 3600, 2)}))
    ranked.sort(key=lambda c: (-c.score, c.entry.id))
    return ranked


def mark_simulated(r, session_id: str, entry_ids: list[int], now: float | None = None) -> None:
    """Remember when these NPCs, and the session, were last simulated."""
    now = time.time() if now is None else now
    pipe = r.pipeline(transaction=True)
    if entry_ids:
        pipe.zadd(rkeys.simulated(session_id), {str(i): now for i in entry_ids})
    pipe.zadd(rkeys.SESSIONS_SIMULATED, {session_id: now})
    pipe.execute()


def sessions_to_tick(r, idle_after_s: float) -> list[str]:
    """Sessions active within ``idle_after_s`` seconds, least recently simulated first (never
    simulated first of all); idle sessions cost nothing until the player returns."""
    active = nearline.active_sessions(r, idle_after_s)
    if not active:
        return []
    last = r.zmscore(rkeys.SESSIONS_SIMULATED, active)
    return [sid for sid, _ in sorted(zip(active, last), key=lambda x: (x[1] or 0.0, x[0]))]


@dataclass(frozen=True)
class Allotment:
    """One session's share of a tick's budget."""

    session_id: str
    max_npcs: int
    max_tokens: int


MIN_SESSION_TOKENS = 300
"""Below this a simulation call cannot fit one NPC; the session waits for the next tick."""


def allot_budget(session_ids: list[str], per_session_npcs: int, per_session_tokens: int,
                 tick_npcs: int, tick_tokens: int) -> tuple[list[Allotment], list[str]]:
    """Share a tick's budget (``tick_npcs`` NPCs, ``tick_tokens`` model tokens) among sessions
    in the given order, each getting at most the per-session budget. Returns the allotments
    and the sessions that wait for a later tick."""
    npcs_left, tokens_left = tick_npcs, tick_tokens
    out, waiting = [], []
    for sid in session_ids:
        n, t = min(per_session_npcs, npcs_left), min(per_session_tokens, tokens_left)
        if n < 1 or t < MIN_SESSION_TOKENS:
            waiting.append(sid)
            continue
        out.append(Allotment(sid, n, t))
        npcs_left -= n
        tokens_left -= t
    return out, waiting


PROMPT_CHARS_PER_TOKEN = 3.0
"""Conservative estimate of prompt size (English is about 4 characters a token)."""
TOKENS_PER_NPC = 80
"""Completion tokens one NPC's update needs at most (a 160-character sentence plus JSON)."""


def fit_budget(chosen: list, places: list[dict], max_tokens: int,
               prompt_chars: Callable[[list, list[dict]], int]) -> tuple[int, int]:
    """How many of ``chosen`` (best first) one simulation call of at most ``max_tokens``
    tokens can cover, and the completion's ``max_tokens``: the prompt
    (``prompt_chars(chosen[:n], places)`` characters, :data:`PROMPT_CHARS_PER_TOKEN` a
    token) plus at least :data:`TOKENS_PER_NPC` completion tokens per NPC (at most twice
    that) must fit. ``(0, 0)`` when not even one NPC fits."""
    n = len(chosen)
    while n > 0:
        prompt = int(prompt_chars(chosen[:n], places) / PROMPT_CHARS_PER_TOKEN) + 1
        completion = min(max_tokens - prompt, TOKENS_PER_NPC * 2 * n)
        if completion >= TOKENS_PER_NPC * n:
            return n, completion
        n -= 1
    return 0, 0


RequestSimulation = Callable[..., bool]
"""``(session_id, *, max_npcs, max_tokens) -> bool``: request one session's simulation for
this tick (``contract.send.request_simulation``); False when one is already queued or
running."""


def world_tick(r, request: RequestSimulation, *, idle_after_s: float, world_id: int | None,
               per_session_npcs: int, per_session_tokens: int, tick_npcs: int,
               tick_tokens: int) -> dict:
    """Share one tick's budget among the sessions active within ``idle_after_s`` seconds
    (least recently simulated first; only world ``world_id``'s when given) and ``request``
    one simulation each with its share (:func:`allot_budget`); a session whose previous
    simulation is still queued or running is skipped (``busy``).

    Returns ``{"sessions", "enqueued", "waiting", "busy", "npc_budget", "token_budget"}``
    (counts; the budgets are the sums of the shares requested).
    """
    sessions = sessions_to_tick(r, idle_after_s)
    if world_id is not None:  # an operator's tick of one world
        sessions = [sid for sid in sessions
                    if (nearline.get_session(r, sid) or {}).get("world_id") == world_id]
    allotted, waiting = allot_budget(sessions, per_session_npcs, per_session_tokens,
                                     tick_npcs, tick_tokens)
    sent, busy = [], []
    for a in allotted:
        if request(a.session_id, max_npcs=a.max_npcs, max_tokens=a.max_tokens):
            sent.append(a)
        else:
            busy.append(a.session_id)
    return {"sessions": len(sessions), "enqueued": len(sent), "waiting": len(waiting),
            "busy": len(busy), "npc_budget": sum(a.max_npcs for a in sent),
            "token_budget": sum(a.max_tokens for a in sent)}
