"""Gossip: the world simulation passes on what one NPC knows to another it meets off-screen.

A simulated NPC meets the world's characters located in the same place (``relations``
``located_in``). When one of a meeting pair witnessed a recent turn the other did not
(``memory.witnesses``), the newest such turn is passed on: the simulation records a turn of
kind ``told``, said by the teller to the listener, witnessed by both, with the original
utterance in its text and ``source`` naming the tick and the original turn (provenance). It
goes through the same pipeline as any turn, so the listener's retrieval has it from then on,
and the original turn stays the teller's (scoping never copies evidence, it is told anew).

No model call: what is passed on is what was said, word for word. At most ``limit`` tellings
per tick and session (``SIMULATE_GOSSIP_PER_TICK``); the event id ``told:{tick}:{teller}:
{listener}`` makes a re-run of the tick record nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memory import nearline, witnesses

TOLD_TEXT_MAX = 1500
"""Characters of the original utterance a told turn quotes."""


@dataclass(frozen=True)
class Telling:
    """One thing to pass on: ``teller`` tells ``listener`` (lore entries) what was said in
    ``turn`` (a recent turn's JSON, ``memory.nearline.recent_turns``)."""

    teller: object
    listener: object
    turn: dict

    def text(self, names: dict[int, str], player_name: str) -> str:
        """What the teller says: ``'{speaker} said: "..."'`` and the reply when there was
        one (``names``: entry id -> title of the NPCs addressed)."""
        t = self.turn
        speaker = t.get("speaker") or witnesses.NARRATIVE_SPEAKERS.get(t.get("kind") or "") \
            or player_name
        out = f'{speaker} said: "{t["player_text"][:TOLD_TEXT_MAX]}"'
        if (t.get("npc_text") or "").strip() and t.get("npc_entry_id") in names:
            out += f' {names[t["npc_entry_id"]]} answered: "{t["npc_text"][:TOLD_TEXT_MAX]}"'
        return out

    def source(self, tick_id: str) -> str:
        """Provenance: the tick and the turn passed on."""
        return f"tick {tick_id}; turn {self.turn['turn_id']}"[:300]


def meetings(simulated: list, characters: list) -> list[tuple[object, object]]:
    """Pairs of characters that meet in a tick: each simulated NPC with every other character
    located in the same place (both orders: either may tell the other), simulated NPCs first.
    ``simulated`` and ``characters`` are lore entries (``relations["located_in"]``)."""
    def place(e):
        return ((e.relations or {}).get("located_in") or [None])[0]

    pairs = []
    for a in simulated:
        for b in characters:
            if b.id != a.id and place(a) is not None and place(a) == place(b):
                pairs += [(a, b), (b, a)]
    seen, out = set(), []
    for a, b in pairs:
        if (a.id, b.id) not in seen:
            seen.add((a.id, b.id))
            out.append((a, b))
    return out


def pick(pairs: list[tuple[object, object]], recent: list[dict], limit: int) -> list[Telling]:
    """What the pairs pass on: for each (teller, listener) the newest of the ``recent`` turns
    (oldest first) the teller witnessed and the listener did not; a turn passed on once in
    this tick is not passed on again, and at most ``limit`` tellings."""
    out: list[Telling] = []
    used: set[str] = set()
    for teller, listener in pairs:
        if len(out) >= limit:
            break
        for t in reversed(recent):
            who = witnesses.turn_witnesses(t)
            if teller.id in who and listener.id not in who and t["turn_id"] not in used:
                used.add(t["turn_id"])
                out.append(Telling(teller, listener, t))
                break
    return out


def pass_on(r, send: Callable[..., object], session_id: str, tick_id: str, simulated: list,
            characters: list, limit: int) -> list[dict]:
    """Record what the ``simulated`` NPCs and the ``characters`` they meet pass on in tick
    ``tick_id`` (:func:`meetings`, :func:`pick`, at most ``limit`` tellings): one ``told``
    turn per telling, through ``memory.turns.record_turn`` over ``send`` (the broker send of
    the turn's pipeline tasks, ``(task name, kwargs, task_id, **options) -> task id``; event
    id ``told:{tick}:{teller id}:{listener id}``: a re-run records nothing twice).

    Returns ``[{teller, listener, turn_id (passed on), told_turn_id}]`` (entry keys and turn
    ids); ``[]`` when ``limit`` is 0, nobody was simulated or the session is not open."""
    from memory import turns  # records through the pipeline's sending path

    sess = nearline.get_session(r, session_id)
    if limit <= 0 or not simulated or sess is None:
        return []
    recent = nearline.recent_turns(r, session_id, nearline.TURNS_CAP)
    tellings = pick(meetings(simulated, characters), recent, limit)
    names = {c.id: c.title for c in characters}
    out = []
    for t in tellings:
        target = turns.Target(session_id=session_id, world_id=sess["world_id"],
                              player_name=sess["player_name"], npc_entry_id=t.listener.id,
                              npc=nearline.entry_doc(t.listener),
                              game_minutes=sess["game_minutes"], every_turns=0)
        rec = turns.record_turn(
            r, send, target, player_text=t.text(names, sess["player_name"]), npc_text="",
            speaker=t.teller.title, kind="told", witnesses=[t.teller.id, t.listener.id],
            event_id=f"told:{tick_id}:{t.teller.id}:{t.listener.id}",
            source=t.source(tick_id))
        out.append({"teller": t.teller.key, "listener": t.listener.key,
                    "turn_id": t.turn["turn_id"], "told_turn_id": rec.turn.turn_id})
    return out


__all__ = ["Telling", "meetings", "pass_on", "pick"]
