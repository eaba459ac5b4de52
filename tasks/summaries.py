"""Queue ``note_update``: ``npc_memory.summarize_session`` keeps the rolling session summary
(the Redis tier, level 2 of hot cache -> Redis -> PostgreSQL; ``memory.summaries``) with the
maintenance model.

Sent by the dialogue server every ``SUMMARIZE_EVERY_TURNS`` turns of a session (task id
``npc_memory.summarize_session:{session_id}:{seq}``, so a resend runs once). It reads only
Redis: the previous summary and the turns after it (at most the 50 the session's turn list
keeps), and stores the new summary unless a summary of a later turn is already stored, with its
audience: the characters who witnessed every turn it covers (``memory.witnesses``), the only
NPCs whose prompt shows it.
It shares the ``note_update`` queue: both are maintenance-model rewrites of session memory.
"""

from __future__ import annotations

from inference import calls
from memory import nearline, summaries, witnesses
from contract.names import TaskName
from contract.payloads import SummaryPayload
from tasks.base import TaskContext, npc_task


@npc_task(TaskName.SUMMARIZE_SESSION, soft_time_limit=120, time_limit=150)
def summarize_session(p: SummaryPayload, ctx: TaskContext) -> dict:
    """Summarize the session up to turn ``upto_seq``.

    Returns ``{"stored": bool, "turns": n, "chars": len, "tokens": n}``; ``{"stored": False,
    "skipped": reason}`` when the session is gone or already summarized that far.

    Raises:
        inference.llm.InvalidModelOutput / ModelError: as ``calls.summarize_session``.
    """
    r = nearline.get_redis()
    sess = nearline.get_session(r, p.session_id)
    if sess is None:
        return {"stored": False, "skipped": "unknown session"}
    prev = summaries.get_summary(r, p.session_id) or {"summary": "", "upto_seq": 0}
    if prev["upto_seq"] >= p.upto_seq:
        return {"stored": False, "skipped": "already summarized"}
    turns = [t for t in nearline.recent_turns(r, p.session_id, nearline.TURNS_CAP)
             if prev["upto_seq"] < t["seq"] <= p.upto_seq]
    if not turns:
        return {"stored": False, "skipped": "no turns"}
    names = {None: "everyone present"}
    for t in turns:
        if t.get("npc_entry_id") not in names:
            doc = nearline.get_entry(r, sess["world_id"], t["npc_entry_id"])
            names[t["npc_entry_id"]] = doc["title"] if doc else "someone"
    out, tokens = calls.summarize_session(
        sess["player_name"], prev["summary"],
        [{**t, "npc": names[t.get("npc_entry_id")]} for t in turns])
    # who may see it: those who witnessed every turn it covers (the previous summary's too)
    audience = set(witnesses.summary_audience(turns))
    if prev.get("audience") is not None and prev["upto_seq"] > 0:
        audience &= set(prev["audience"])
    stored = summaries.save_summary(r, p.session_id, out.summary, p.upto_seq,
                                    audience=sorted(audience))
    return {"stored": stored, "turns": len(turns), "chars": len(out.summary), "tokens": tokens}
