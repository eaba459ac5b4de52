"""Who knows what: the characters who witnessed each turn, and one NPC's view of the memory.

Every recorded turn carries ``witnesses`` (``contract.payloads.TurnPayload``), the lore entry
ids of the characters who witnessed it: the NPC addressed, the speaker when it is a
character given by its entry key, and the characters the event names as present. Its
evidence items (``memory.evidence``) carry the same list. An NPC knows what it witnessed;
being told something is witnessing the turn in which someone tells it. The world's base lore
is public canon, known to everyone.

Nothing is removed: scoping only filters what one NPC sees. The dialogue prompt of an NPC
and ``GET /v1/sessions/{id}/search?npc_id=`` get

- evidence items only of turns the NPC witnessed (an exact FAISS id selector,
  :func:`witnessed_item_ids`, so the nearest witnessed items are found however many others
  the session holds);
- a session note of an entry only when the NPC witnessed every turn the note folds in
  (``session:{sid}:note_turns:{entry_id}``); otherwise the entry's base lore alone (the note
  cannot be split by turn: a rewrite merges its lines). A note line from a turn whose
  witnesses are not recorded (a turn recorded before witnesses were, or one the simulation
  wrote without a turn) is not attributable and does not hide the note;
- an entry created in the session only when the NPC witnessed the turn that created it;
- the session summary only when the NPC witnessed every turn it covers (its ``audience``).

Redis keys (written with the turn, in the transaction of ``memory.nearline.record_turn``,
expiring with the session's keys):

- ``session:{sid}:witnesses`` hash: turn id -> JSON list of witness entry ids;
- ``session:{sid}:witnessed:{npc_entry_id}`` set of the ``seq`` of every turn the NPC
  witnessed (its evidence item ids are ``2 * seq`` and ``2 * seq + 1``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from memory import keys as rkeys

NARRATIVE_SPEAKERS = {"narration": "Narrator", "game": "Game"}
"""The evidence speaker of a narration or game event posted without a ``speaker``."""


def turn_witnesses(turn: dict) -> list[int]:
    """The witnesses of a turn (``TurnPayload`` fields or an archived row as a dict): its
    ``witnesses`` and the addressed ``npc_entry_id``, sorted, without repeats. A turn
    without ``witnesses`` (recorded before they were) is witnessed by its NPC alone."""
    out = {int(w) for w in (turn.get("witnesses") or [])}
    if turn.get("npc_entry_id") is not None:
        out.add(int(turn["npc_entry_id"]))
    return sorted(out)


def queue_record(pipe, session_id: str, turn: dict, ttl_s: int) -> None:
    """Queue on ``pipe`` the writes recording a turn's witnesses (both keys above)."""
    who = turn_witnesses(turn)
    pipe.hset(rkeys.witnesses(session_id), turn["turn_id"], json.dumps(who))
    pipe.expire(rkeys.witnesses(session_id), ttl_s)
    for npc in who:
        pipe.sadd(rkeys.witnessed(session_id, npc), int(turn["seq"]))
        pipe.expire(rkeys.witnessed(session_id, npc), ttl_s)


def witnessed_item_ids(r, session_id: str, npc_entry_id: int) -> np.ndarray:
    """The evidence item ids (``seq * 2 + part``, int64) of the turns the NPC witnessed in
    the session, from Redis; empty when none."""
    seqs = np.fromiter((int(s) for s in r.smembers(rkeys.witnessed(session_id, npc_entry_id))),
                       dtype=np.int64)
    return np.concatenate([seqs * 2, seqs * 2 + 1])


def unwitnessed(r, session_id: str, npc_entry_id: int, turn_ids: Iterable[str]) -> set[str]:
    """Those of ``turn_ids`` whose witnesses are recorded and do not include the NPC (one
    ``HMGET``); a turn whose witnesses are not recorded is not attributable, so not in it."""
    ids = sorted(set(turn_ids))
    if not ids:
        return set()
    raw = r.hmget(rkeys.witnesses(session_id), ids)
    return {t for t, v in zip(ids, raw) if v is not None and int(npc_entry_id) not in json.loads(v)}


def sees_item(item: dict, npc_entry_id: int) -> bool:
    """An evidence item is in the NPC's view: the NPC is among its ``witnesses`` (an item
    stored before witnesses were recorded has none and is in every view)."""
    who = item.get("witnesses")
    return who is None or int(npc_entry_id) in who


def scope_documents(r, session_id: str, npc_entry_id: int, docs: list[dict],
                    note_turns: dict[int, list[str]]) -> list[dict]:
    """The NPC's view of composite documents (dicts with ``id``, ``note``, and
    ``created_by_turn_id`` for an entry created in the session): a note folding in a turn
    the NPC did not witness is blanked (the base lore stays), an entry created by such a
    turn is left out. ``note_turns``: entry id -> the turn ids its session note folds in.
    One Redis round trip when any document has a note or a creating turn, none otherwise."""
    asked = {t for d in docs if d.get("note") for t in note_turns.get(d["id"], [])}
    asked |= {d["created_by_turn_id"] for d in docs if d.get("created_by_turn_id")}
    hidden = unwitnessed(r, session_id, npc_entry_id, asked)
    out = []
    for d in docs:
        if d.get("created_by_turn_id") in hidden:
            continue
        if d.get("note") and hidden.intersection(note_turns.get(d["id"], [])):
            d = {**d, "note": ""}
        out.append(d)
    return out


def summary_audience(turns: Iterable[dict]) -> list[int]:
    """The characters who witnessed every one of ``turns`` (sorted entry ids): who may see a
    summary of them."""
    sets = [set(turn_witnesses(t)) for t in turns]
    return sorted(set.intersection(*sets)) if sets else []


__all__ = ["NARRATIVE_SPEAKERS", "queue_record", "scope_documents", "sees_item",
           "summary_audience", "turn_witnesses", "unwitnessed", "witnessed_item_ids"]
