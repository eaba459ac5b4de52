"""Level 2 additions in Redis (the nearline tier; the memory cards are their source):
a rolling session summary, the salient memories of each (session, NPC), and the NPC's emotional
trajectory.

Keys (all expire ``SESSION_TTL_S`` after their last write, 30 days by default, like the other
session keys):

- ``session:{session_id}:summary``  JSON ``{summary, upto_seq, updated_at, audience}``: 300-600 chars
  written by ``npc_memory.summarize_session`` every ``SUMMARIZE_EVERY_TURNS`` turns; a summary
  of an older ``upto_seq`` never replaces a newer one (one Lua script).
- ``session:{session_id}:salient:{npc_entry_id}``  sorted set, member JSON
  ``{event_id, kind, detail, seq, at}`` -> importance; the ``SALIENT_KEEP`` (10) most important
  card events (gifts, insults, lives saved, betrayals, promises, quests). Written in the same
  MULTI/EXEC as the cards (``memory.cards.apply_events``), so once per event.
- ``session:{session_id}:trajectory:{npc_entry_id}``  sorted set, member JSON
  ``{rev, trust, affinity, at}`` -> unix time: the relationship scores after every change
  (newest ``TRAJECTORY_KEEP`` kept).

Importance is ``KIND_WEIGHT[kind] * intensity`` (intensity 1..10; quest events count 5): the
poignancy score of Park et al. 2023 (Generative Agents) given by the event kind instead of
asking a model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis

from memory import keys as rkeys
from memory import nearline, witnesses
from memory.nearline import session_ttl_s

SALIENT_KEEP = 10
TRAJECTORY_KEEP = 100
KIND_WEIGHT: dict[str, float] = {
    "saved_life": 10, "betrayal": 9, "promise_broken": 7, "quest_failed": 6,
    "quest_completed": 6, "gift": 5, "insult": 5, "promise_kept": 5, "promise_made": 4,
    "quest_started": 3, "milestone": 3, "trust_up": 2, "trust_down": 2, "affinity_up": 2,
    "affinity_down": 2, "flag_set": 1,
}
"""Importance of a card event kind per point of intensity (0..10 scale)."""


def importance(event: dict) -> float:
    """0..100: ``KIND_WEIGHT[kind] * intensity`` (quest events: intensity 5)."""
    return KIND_WEIGHT.get(event.get("kind", ""), 1) * float(event.get("intensity") or 5)


def queue_card_memories(pipe, session_id: str, npc_entry_id: int, applied: list[dict],
                        relationship=None) -> None:
    """Add the salient-memory and trajectory writes for newly ``applied`` card events to
    ``pipe`` (a MULTI/EXEC pipeline: ``memory.cards.apply_events``'s). ``relationship``: the
    relationship card after the events, when it changed."""
    ttl = session_ttl_s()
    sk = rkeys.salient(session_id, npc_entry_id)
    if applied:
        pipe.zadd(sk, {json.dumps({"event_id": a["event_id"], "kind": a["kind"],
                                   "detail": (a.get("detail") or a.get("name") or "")[:160],
                                   "seq": a.get("seq"), "at": a.get("applied_at")},
                                  sort_keys=True): importance(a) for a in applied})
        pipe.zremrangebyrank(sk, 0, -(SALIENT_KEEP + 1))
        pipe.expire(sk, ttl)
    if relationship is not None:
        tk = rkeys.trajectory(session_id, npc_entry_id)
        now = time.time()
        pipe.zadd(tk, {json.dumps({"rev": relationship.rev, "trust": relationship.trust,
                                   "affinity": relationship.affinity, "at": now}): now})
        pipe.zremrangebyrank(tk, 0, -(TRAJECTORY_KEEP + 1))
        pipe.expire(tk, ttl)


_SAVE_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and tonumber(doc['upto_seq']) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


def save_summary(r: redis.Redis, session_id: str, summary: str, upto_seq: int,
                 audience: list[int] | None = None) -> bool:
    """Store the session summary of turns up to ``upto_seq`` unless one of the same or a later
    turn is stored (atomic); returns whether it was stored. ``audience``: the entry ids of
    the characters who witnessed every turn it covers (``memory.witnesses``), the only NPCs
    whose prompt gets it; None (summaries written before witnesses were kept): everyone."""
    doc = json.dumps({"summary": summary, "upto_seq": int(upto_seq), "updated_at": time.time(),
                      **({"audience": sorted(audience)} if audience is not None else {})})
    return bool(r.eval(_SAVE_NEWER, 1, rkeys.summary(session_id), doc, int(upto_seq),
                       session_ttl_s()))


def get_summary(r: redis.Redis, session_id: str) -> dict | None:
    """``{summary, upto_seq, updated_at, audience?}`` or None."""
    raw = r.get(rkeys.summary(session_id))
    return json.loads(raw) if raw else None


def summary_for(raw: bytes | str | None, npc_entry_id: int) -> str:
    """The summary text of a stored summary JSON (``raw``) as the NPC's prompt may show it:
    '' when there is none or the NPC is not in its ``audience`` (it did not witness every
    turn the summary covers)."""
    if not raw:
        return ""
    doc = json.loads(raw)
    audience = doc.get("audience")
    if audience is not None and int(npc_entry_id) not in audience:
        return ""
    return doc["summary"]


def parse_salient(raw: list) -> list[dict]:
    """``ZREVRANGE ... WITHSCORES`` output -> ``[{..., importance}]``, most important first."""
    return [{**json.loads(m), "importance": float(s)} for m, s in raw]


def salient_memories(r: redis.Redis, session_id: str, npc_entry_id: int,
                     n: int = SALIENT_KEEP) -> list[dict]:
    """The ``n`` most important card events of (session, NPC), most important first."""
    return parse_salient(r.zrevrange(rkeys.salient(session_id, npc_entry_id), 0, n - 1,
                                     withscores=True))


def trajectory(r: redis.Redis, session_id: str, npc_entry_id: int) -> list[dict]:
    """``[{rev, trust, affinity, at}]`` oldest first."""
    return [json.loads(m) for m in r.zrange(rkeys.trajectory(session_id, npc_entry_id), 0, -1)]


def prefetch(r: redis.Redis, session_id: str, npc_entry_ids: list[int]) -> dict:
    """Summary, salient memories and trajectory of many NPCs of a session in one pipelined
    round trip: ``{"summary": dict|None, "npcs": {id: {"salient": [...], "trajectory": [...]}}}``."""
    pipe = r.pipeline(transaction=False)
    pipe.get(rkeys.summary(session_id))
    for npc in npc_entry_ids:
        pipe.zrevrange(rkeys.salient(session_id, npc), 0, SALIENT_KEEP - 1, withscores=True)
        pipe.zrange(rkeys.trajectory(session_id, npc), 0, -1)
    out = pipe.execute()
    npcs = {}
    for i, npc in enumerate(npc_entry_ids):
        sal, traj = out[1 + 2 * i], out[2 + 2 * i]
        npcs[npc] = {"salient": parse_salient(sal), "trajectory": [json.loads(m) for m in traj]}
    return {"summary": json.loads(out[0]) if out[0] else None, "npcs": npcs}


def render_memories(summary: str, salient: list[dict], budget_chars: int) -> str:
    """Prompt text of the session summary and the salient memories within ``budget_chars``:
    the summary first (cut at a sentence end if it does not fit), then memories most important
    first while they fit. '' when there is nothing or no budget."""
    if budget_chars <= 0:
        return ""
    lines: list[str] = []
    used = 0
    if summary:
        text = summary.strip()
        if len(text) > budget_chars:
            cut = text[:budget_chars]
            end = cut.rfind(". ")
            text = cut[: end + 1] if end > 0 else cut
        lines.append(text)
        used = len(text)
    for m in salient:
        line = f"- {m['kind'].replace('_', ' ')}: {m['detail']}"
        if used + len(line) + 1 > budget_chars:
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


Summarize = Callable[[str, str, list[dict]], tuple[object, int]]
"""``(player_name, previous summary, turns with "npc" names) -> (output with .summary,
tokens)``: the maintenance model call (``inference.calls.summarize_session``)."""


def turns_to_summarize(r: redis.Redis, session_id: str, after_seq: int,
                       upto_seq: int) -> list[dict]:
    """The session's recent turns (at most the ``nearline.TURNS_CAP`` it keeps) with
    ``after_seq < seq <= upto_seq``, oldest first."""
    return [t for t in nearline.recent_turns(r, session_id, nearline.TURNS_CAP)
            if after_seq < t["seq"] <= upto_seq]


def npc_names(r: redis.Redis, world_id: int, turns: list[dict]) -> dict:
    """Entry id -> title of the NPCs the ``turns`` address (``None``: "everyone present";
    an entry not cached: "someone")."""
    names = {None: "everyone present"}
    for t in turns:
        if t.get("npc_entry_id") not in names:
            doc = nearline.get_entry(r, world_id, t["npc_entry_id"])
            names[t["npc_entry_id"]] = doc["title"] if doc else "someone"
    return names


def summarize_session(r: redis.Redis, session_id: str, upto_seq: int,
                      summarize: Summarize) -> dict:
    """Fold the session's turns after the stored summary, up to ``upto_seq``, into a new
    summary with ``summarize`` and store it (:func:`save_summary`: not over a summary of a
    later turn), its audience being the characters who witnessed every turn it covers
    (``memory.witnesses.summary_audience``; the previous summary's audience too). Reads
    Redis only.

    Returns ``{"stored": bool, "turns": n, "chars": len, "tokens": n}``; ``{"stored": False,
    "skipped": reason}`` when the session is gone, already summarized that far or has no
    turns to summarize. Raises what ``summarize`` raises.
    """
    sess = nearline.get_session(r, session_id)
    if sess is None:
        return {"stored": False, "skipped": "unknown session"}
    prev = get_summary(r, session_id) or {"summary": "", "upto_seq": 0}
    if prev["upto_seq"] >= upto_seq:
        return {"stored": False, "skipped": "already summarized"}
    turns = turns_to_summarize(r, session_id, prev["upto_seq"], upto_seq)
    if not turns:
        return {"stored": False, "skipped": "no turns"}
    names = npc_names(r, sess["world_id"], turns)
    out, tokens = summarize(sess["player_name"], prev["summary"],
                            [{**t, "npc": names[t.get("npc_entry_id")]} for t in turns])
    # who may see it: those who witnessed every turn it covers (the previous summary's too)
    audience = set(witnesses.summary_audience(turns))
    if prev.get("audience") is not None and prev["upto_seq"] > 0:
        audience &= set(prev["audience"])
    stored = save_summary(r, session_id, out.summary, upto_seq, audience=sorted(audience))
    return {"stored": stored, "turns": len(turns), "chars": len(out.summary), "tokens": tokens}
