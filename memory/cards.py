"""Memory cards (the Redis tier's relationship and quest cards): what
an NPC remembers about the player of a session, kept in the nearline tier so that the dialogue
hot path reads it from Redis only.

Two cards per (session, NPC). A session is one player on one world, so (session, NPC) is an
NPC x player pair; the quest card is per NPC too, like the relationship card: the quests this
NPC and the player share.

- Relationship card (``RelationshipCard``): ``trust`` and ``affinity``, integers clamped to
  ``SCORE_MIN..SCORE_MAX`` (-100..100, 0 for a stranger); promises the *player* made to the NPC
  (status ``made``, ``kept`` or ``broken``), betrayals (with ``severity`` 1..10), gifts,
  insults and life-saving events, each detail with the turn id and sequence number it came from.
- Quest card (``QuestCard``): quests (``active``, ``completed`` or ``failed``, with
  milestones) and story flags (name -> short value).

Every card also keeps ``counts`` (events applied, per kind: exact, never trimmed), ``trimmed``
(details dropped by the size rule) and ``rev`` (one more per update that changed the card).

Events and their effect on the scores, per point of intensity (1..10), ``EFFECTS``:

==============  =====  ========  ==================================
kind            trust  affinity  remembered as
==============  =====  ========  ==================================
promise_made        0        0  a promise, status ``made``
promise_kept       +2       +1  the matching open promise -> ``kept``
promise_broken     -2       -1  the matching open promise -> ``broken``
betrayal           -3       -2  a betrayal, ``severity`` = intensity
gift               +1       +2  a gift
insult              0       -2  an insult
saved_life         +3       +3  a life-saving event
trust_up/down      +1/-1     0  the score only
affinity_up/down    0    +1/-1  the score only
==============  =====  ========  ==================================

Quest events: ``quest_started`` (a new active quest, its detail the goal), ``milestone`` (a step
of a quest), ``quest_completed``/``quest_failed`` (closes it; the detail becomes its last
milestone), ``flag_set`` (flag ``name`` takes the value ``detail``, names compared without
case). A kept or broken promise names the open promise most like it (rapidfuzz
``token_set_ratio`` >= ``PROMISE_MATCH_MIN``); a quest event names the quest with the same
words (case, punctuation and order ignored), else the newest quest whose words contain the
other's or are contained in them (at least two words). An event that matches nothing is
recorded as a new promise or quest, so no event is lost.

Size rule: a card is at most ``MAX_CARD_BYTES`` (2048) bytes as stored (compact UTF-8 JSON).
Texts are clipped first (``TEXT_CHARS``, ``NAME_CHARS``, ``VALUE_CHARS``); while the card is
still too large, the oldest detail of the least important kind is dropped (its event stays
counted in ``counts``, ``trimmed`` goes up by one). Least important first:

- relationship: insults, gifts, resolved (kept or broken) promises, life-saving events,
  betrayals, open promises;
- quest: milestones of closed quests, closed quests, flags, milestones of active quests,
  active quests.

Atomicity: ``apply_events`` reads both cards and the applied-event hash under ``WATCH``, applies
the events in Python and writes everything in one ``MULTI/EXEC``; a concurrent write aborts
the transaction and it runs again on the fresh cards (never a blind read-modify-write).

Idempotency: an event id (``{turn_id}:r{i}`` / ``{turn_id}:q{i}``, the turn and item index) is
applied at most once: applied events are kept in a hash (id -> the event as applied, with its
effective score changes), so a redelivered analysis is a no-op that reports what the first
delivery applied. The newest ``APPLIED_CAP`` ids per card pair are kept.

Redis keys (see ``memory.keys`` for the whole layout):

- ``session:{session_id}:card:{npc_entry_id}:relationship``  JSON ``RelationshipCard``
- ``session:{session_id}:card:{npc_entry_id}:quest``         JSON ``QuestCard``
- ``session:{session_id}:card:{npc_entry_id}:applied``       hash event id -> JSON applied event
- ``session:{session_id}:card:{npc_entry_id}:applied_order`` sorted set event id -> unix time
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, get_args

import redis
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from rapidfuzz import fuzz, utils

from memory import keys as rkeys
from memory.nearline import session_ttl_s
from memory.summaries import queue_card_memories


SCORE_MIN, SCORE_MAX = -100, 100
"""Bounds of ``trust`` and ``affinity`` (inclusive); a new card has 0 for both."""
MAX_CARD_BYTES = 2048
"""Upper bound of one stored card: UTF-8 bytes of its compact JSON."""
TEXT_CHARS = 120
"""A remembered detail (promise, gift, milestone...) is clipped to this many characters."""
NAME_CHARS = 60
"""A quest or flag name is clipped to this many characters."""
VALUE_CHARS = 60
"""A flag value is clipped to this many characters."""
APPLIED_CAP = 2000
"""Applied event ids remembered per (session, NPC) for idempotency (newest kept)."""
MAX_ATTEMPTS = 100
"""Optimistic transaction attempts before ``CardConflict``."""
PROMISE_MATCH_MIN = 60
"""rapidfuzz ``token_set_ratio`` (0-100) at or above which a kept/broken event names an open promise."""

RelationshipKind = Literal["promise_made", "promise_kept", "promise_broken", "betrayal", "gift",
                           "insult", "saved_life", "trust_up", "trust_down", "affinity_up",
                           "affinity_down"]
QuestKind = Literal["quest_started", "milestone", "quest_completed", "quest_failed", "flag_set"]
RELATIONSHIP_KINDS: tuple[str, ...] = get_args(RelationshipKind)
QUEST_KINDS: tuple[str, ...] = get_args(QuestKind)
CardKind = Literal["relationship", "quest"]

EFFECTS: dict[str, tuple[int, int]] = {
    "promise_made": (0, 0),
    "promise_kept": (2, 1),
    "promise_broken": (-2, -1),
    "betrayal": (-3, -2),
    "gift": (1, 2),
    "insult": (0, -2),
    "saved_life": (3, 3),
    "trust_up": (1, 0),
    "trust_down": (-1, 0),
    "affinity_up": (0, 1),
    "affinity_down": (0, -1),
}
"""(trust, affinity) change per point of intensity, by relationship event kind."""


class CardConflict(Exception):
    """The card kept changing under us for ``MAX_ATTEMPTS`` transactions (retry the task)."""


class CardCorrupt(ValueError):
    """A card stored in Redis is not a valid card; it is left as it is (nothing overwritten)."""


class CardTooLarge(ValueError):
    """A card is over ``MAX_CARD_BYTES`` with nothing left to drop (cannot happen with the
    clipped texts; raised rather than storing an oversized card)."""


# --------------------------------------------------------------------------- events

EventId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
EventText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class RelationshipEvent(BaseModel):
    """One thing the player did to the NPC (trust/affinity updates, promises,
    betrayals, gifts, insults, life-saving events).

    ``event_id`` is unique per event (``{turn_id}:r{i}`` from the analysis); ``intensity`` 1..10
    scales the score change (``EFFECTS``) and is a betrayal's ``severity``. ``detail`` is one
    sentence (clipped to ``TEXT_CHARS`` when stored). Invalid fields raise
    ``pydantic.ValidationError``.
    """

    model_config = ConfigDict(extra="forbid")
    event_id: EventId
    kind: RelationshipKind
    detail: EventText
    intensity: int = Field(1, ge=1, le=10)
    turn_id: str | None = Field(None, max_length=64)
    seq: int | None = Field(None, ge=1)


class QuestEvent(BaseModel):
    """One change of the quests between the NPC and the player, or of a story flag (active
    quests, milestones, flags).

    ``name`` is the quest or flag name; ``detail`` the goal (``quest_started``), the step
    (``milestone``), the outcome (``quest_completed``/``quest_failed``) or the flag's value
    (``flag_set``; empty means ``yes``). Invalid fields raise ``pydantic.ValidationError``.
    """

    model_config = ConfigDict(extra="forbid")
    event_id: EventId
    kind: QuestKind
    name: EventText
    detail: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""
    turn_id: str | None = Field(None, max_length=64)
    seq: int | None = Field(None, ge=1)


# --------------------------------------------------------------------------- cards


class Detail(BaseModel):
    """A remembered event: its text and the turn (id, sequence number) it came from."""

    model_config = ConfigDict(extra="forbid")
    text: str
    turn: str | None = None
    seq: int | None = None


class Promise(Detail):
    """A promise the player made; ``closed_turn``/``closed_seq`` say where it was kept or broken."""

    status: Literal["made", "kept", "broken"] = "made"
    closed_turn: str | None = None
    closed_seq: int | None = None


class Betrayal(Detail):
    """A betrayal by the player, ``severity`` 1 (slight) .. 10 (unforgivable)."""

    severity: int = Field(ge=1, le=10)


class RelationshipCard(BaseModel):
    """The NPC's relationship with the player of one session (<= 2 KB). Scores are integers in
    -100..100; lists are oldest first."""

    model_config = ConfigDict(extra="forbid")
    rev: int = 0
    trust: int = Field(0, ge=SCORE_MIN, le=SCORE_MAX)
    affinity: int = Field(0, ge=SCORE_MIN, le=SCORE_MAX)
    counts: dict[str, int] = Field(default_factory=dict)
    trimmed: int = 0
    promises: list[Promise] = Field(default_factory=list)
    betrayals: list[Betrayal] = Field(default_factory=list)
    saved_life: list[Detail] = Field(default_factory=list)
    gifts: list[Detail] = Field(default_factory=list)
    insults: list[Detail] = Field(default_factory=list)


class Quest(BaseModel):
    """A quest between the NPC and the player: name, status, goal, milestones (oldest first),
    the turn that started it and the turn that closed it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    status: Literal["active", "completed", "failed"] = "active"
    goal: str = ""
    milestones: list[Detail] = Field(default_factory=list)
    turn: str | None = None
    seq: int | None = None
    closed_turn: str | None = None
    closed_seq: int | None = None


class Flag(BaseModel):
    """A story flag (``name`` -> short ``value``) and the turn that last set it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    value: str
    turn: str | None = None
    seq: int | None = None


class QuestCard(BaseModel):
    """Quest state between the NPC and the player of one session (<= 2 KB): quests and flags,
    oldest first."""

    model_config = ConfigDict(extra="forbid")
    rev: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    trimmed: int = 0
    quests: list[Quest] = Field(default_factory=list)
    flags: list[Flag] = Field(default_factory=list)


@dataclass
class Cards:
    """Both cards of one (session, NPC)."""

    relationship: RelationshipCard = field(default_factory=RelationshipCard)
    quest: QuestCard = field(default_factory=QuestCard)


@dataclass
class CardUpdate:
    """Outcome of ``apply_events``: the cards after it, the events it applied (as stored:
    the event's fields plus ``card``, ``trust_delta``, ``affinity_delta``, ``applied_at``), the
    events that had been applied before (as first applied) and the details dropped by the
    size rule."""

    cards: Cards
    applied: list[dict]
    duplicates: list[dict]
    trimmed: int = 0


def dump_card(card: RelationshipCard | QuestCard) -> str:
    """The stored form of a card: compact JSON, ``None`` fields left out."""
    return card.model_dump_json(exclude_none=True)


def card_bytes(card: RelationshipCard | QuestCard) -> int:
    """Size of the stored form in UTF-8 bytes (what ``MAX_CARD_BYTES`` bounds)."""
    return len(dump_card(card).encode("utf-8"))


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def _clamp(value: int) -> int:
    return max(SCORE_MIN, min(SCORE_MAX, value))


def _best(candidates: Sequence, key: Callable, query: str, scorer, minimum: int):
    """The candidate whose ``key`` best matches ``query`` (score >= minimum), or None."""
    best, best_score = None, -1.0
    for c in candidates:
        score = scorer(query, key(c), processor=utils.default_process)
        if score > best_score:
            best, best_score = c, score
    return best if best_score >= minimum else None


def apply_relationship_event(card: RelationshipCard, e: RelationshipEvent) -> dict:
    """Apply one event to ``card`` in place (no size rule, no Redis); returns the effective
    ``{"trust_delta", "affinity_delta"}`` after clamping to -100..100."""
    per_trust, per_affinity = EFFECTS[e.kind]
    trust0, affinity0 = card.trust, card.affinity
    card.trust = _clamp(card.trust + per_trust * e.intensity)
    card.affinity = _clamp(card.affinity + per_affinity * e.intensity)
    card.counts[e.kind] = card.counts.get(e.kind, 0) + 1
    text = _clip(e.detail, TEXT_CHARS)
    if e.kind == "promise_made":
        card.promises.append(Promise(text=text, turn=e.turn_id, seq=e.seq))
    elif e.kind in ("promise_kept", "promise_broken"):
        status = "kept" if e.kind == "promise_kept" else "broken"
        promise = _best([p for p in card.promises if p.status == "made"], lambda p: p.text, text,
                        fuzz.token_set_ratio, PROMISE_MATCH_MIN)
        if promise is None:  # a promise the card never saw (or dropped): remember it closed
            card.promises.append(Promise(text=text, turn=e.turn_id, seq=e.seq, status=status,
                                         closed_turn=e.turn_id, closed_seq=e.seq))
        else:
            promise.status, promise.closed_turn, promise.closed_seq = status, e.turn_id, e.seq
    elif e.kind == "betrayal":
        card.betrayals.append(Betrayal(text=text, turn=e.turn_id, seq=e.seq, severity=e.intensity))
    elif e.kind == "gift":
        card.gifts.append(Detail(text=text, turn=e.turn_id, seq=e.seq))
    elif e.kind == "insult":
        card.insults.append(Detail(text=text, turn=e.turn_id, seq=e.seq))
    elif e.kind == "saved_life":
        card.saved_life.append(Detail(text=text, turn=e.turn_id, seq=e.seq))
    return {"trust_delta": card.trust - trust0, "affinity_delta": card.affinity - affinity0}


def _words(text: str) -> frozenset[str]:
    return frozenset(utils.default_process(text).split())


def _find_quest(quests: list[Quest], name: str) -> Quest | None:
    """The quest with the same words as ``name``, else the newest whose words contain or are
    contained in those of ``name`` (the smaller set having at least two words), else None.
    ("Current quest A" and "Current quest B" stay two quests.)"""
    words = _words(name)
    for q in quests:
        if _words(q.name) == words:
            return q
    for q in reversed(quests):
        other = _words(q.name)
        small, big = sorted((words, other), key=len)
        if len(small) >= 2 and small <= big:
            return q
    return None


def apply_quest_event(card: QuestCard, e: QuestEvent) -> dict:
    """Apply one event to ``card`` in place (no size rule, no Redis); returns ``{}`` (quest
    events change no score)."""
    card.counts[e.kind] = card.counts.get(e.kind, 0) + 1
    name = _clip(e.name, NAME_CHARS)
    if e.kind == "flag_set":
        card.flags = [f for f in card.flags if f.name.casefold() != name.casefold()]
        card.flags.append(Flag(name=name, value=_clip(e.detail or "yes", VALUE_CHARS),
                               turn=e.turn_id, seq=e.seq))
        return {}
    detail = _clip(e.detail, TEXT_CHARS)
    quest = _find_quest(card.quests, name)
    if quest is None:
        quest = Quest(name=name, turn=e.turn_id, seq=e.seq)
        card.quests.append(quest)
    if e.kind == "quest_started":
        quest.status, quest.closed_turn, quest.closed_seq = "active", None, None
        if detail:
            quest.goal = detail
    elif e.kind == "milestone":
        quest.milestones.append(Detail(text=detail or name, turn=e.turn_id, seq=e.seq))
    else:
        quest.status = "completed" if e.kind == "quest_completed" else "failed"
        quest.closed_turn, quest.closed_seq = e.turn_id, e.seq
        if detail:
            quest.milestones.append(Detail(text=detail, turn=e.turn_id, seq=e.seq))
    return {}


def _first(items: list, pred=lambda _x: True) -> int | None:
    return next((i for i, x in enumerate(items) if pred(x)), None)


def _drop_relationship_detail(card: RelationshipCard) -> bool:
    """Drop the oldest detail of the least important relationship kind that has one."""
    for items, pred in ((card.insults, None), (card.gifts, None),
                        (card.promises, lambda p: p.status != "made"), (card.saved_life, None),
                        (card.betrayals, None), (card.promises, None)):
        i = _first(items, pred) if pred else (0 if items else None)
        if i is not None:
            del items[i]
            return True
    return False


def _drop_quest_detail(card: QuestCard) -> bool:
    """Drop the oldest detail of the least important quest kind that has one."""
    closed = [q for q in card.quests if q.status != "active"]
    active = [q for q in card.quests if q.status == "active"]
    for q in closed:
        if q.milestones:
            del q.milestones[0]
            return True
    if closed:
        card.quests.remove(closed[0])
        return True
    if card.flags:
        del card.flags[0]
        return True
    for q in active:
        if q.milestones:
            del q.milestones[0]
            return True
    if active:
        card.quests.remove(active[0])
        return True
    return False


def fit_card(card: RelationshipCard | QuestCard) -> int:
    """Apply the size rule in place: drop the oldest detail of the least important kind until
    the card is at most ``MAX_CARD_BYTES``; returns how many details were dropped (also added
    to ``card.trimmed``).

    Raises:
        CardTooLarge: still too large with nothing left to drop.
    """
    drop = _drop_relationship_detail if isinstance(card, RelationshipCard) else _drop_quest_detail
    dropped = 0
    while card_bytes(card) > MAX_CARD_BYTES:
        if not drop(card):
            raise CardTooLarge(f"card is {card_bytes(card)} bytes with nothing left to drop")
        dropped += 1
        card.trimmed += 1
    return dropped


# --------------------------------------------------------------------------- Redis


def _load(model, raw: bytes | None, key: str):
    if raw is None:
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise CardCorrupt(f"{key} does not hold a valid {model.__name__}: {exc}") from exc


def cards_from_raw(session_id: str, npc_entry_id: int, raw_rel: bytes | None,
                   raw_quest: bytes | None) -> Cards:
    """Both cards from their stored JSON (as ``MGET`` of the two card keys returns it; None:
    not written yet, an empty card).

    Raises:
        CardCorrupt: a stored card is not valid JSON of its model.
    """
    return Cards(_load(RelationshipCard, raw_rel, rkeys.card(session_id, npc_entry_id, "relationship")),
                 _load(QuestCard, raw_quest, rkeys.card(session_id, npc_entry_id, "quest")))


def get_cards(r: redis.Redis, session_id: str, npc_entry_id: int) -> Cards:
    """Both cards of (session, NPC) in one ``MGET``; empty cards when none was written.

    Raises:
        CardCorrupt: a stored card is not valid JSON of its model.
    """
    rk, qk = rkeys.card(session_id, npc_entry_id, "relationship"), rkeys.card(session_id, npc_entry_id, "quest")
    raw_rel, raw_quest = r.mget(rk, qk)
    return Cards(_load(RelationshipCard, raw_rel, rk), _load(QuestCard, raw_quest, qk))


def applied_events(r: redis.Redis, session_id: str, npc_entry_id: int) -> list[dict]:
    """The remembered applied events of (session, NPC), oldest first."""
    ids = r.zrange(rkeys.card_applied_order(session_id, npc_entry_id), 0, -1)
    if not ids:
        return []
    raw = r.hmget(rkeys.card_applied(session_id, npc_entry_id), ids)
    return [json.loads(x) for x in raw if x is not None]


def turn_applied(r: redis.Redis, session_id: str, npc_entry_id: int, turn_id: str) -> list[dict]:
    """Every remembered event applied to the (session, NPC) cards from turn ``turn_id`` (ids
    ``{turn_id}:...``), by any delivery of its analysis, in the order applied."""
    pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in turn_id) + ":*"
    found = [json.loads(v) for _k, v in r.hscan_iter(rkeys.card_applied(session_id, npc_entry_id),
                                                     match=pattern, count=1000)]
    return sorted(found, key=lambda e: (e.get("applied_at", 0), e["card"] != "relationship",
                                        e["event_id"]))


def apply_events(r: redis.Redis, session_id: str, npc_entry_id: int,
                 relationship: Iterable[RelationshipEvent] = (),
                 quests: Iterable[QuestEvent] = (), *,
                 max_attempts: int = MAX_ATTEMPTS) -> CardUpdate:
    """Apply events to the (session, NPC) cards atomically and at most once per event id.

    One optimistic transaction (``WATCH`` both cards and the applied hash, compute, ``MULTI``/
    ``EXEC``) applies every new event, the size rule and the applied-event bookkeeping; a
    concurrent writer makes it run again on the fresh cards (with a short jittered pause).
    Events whose id was applied before are skipped and reported in ``duplicates``; events of
    a turn a rollback of the session undid (``memory.fencing``: the Redis set is watched and
    read in the same transaction) are skipped and reported nowhere.

    Args:
        relationship: ``RelationshipEvent`` s, applied in order.
        quests: ``QuestEvent`` s, applied in order after the relationship events.

    Raises:
        ValueError: two events of the call share an id.
        CardCorrupt: a stored card is invalid (nothing is written).
        CardConflict: ``max_attempts`` transactions lost the race.
    """
    events: list[tuple[CardKind, RelationshipEvent | QuestEvent]] = (
        [("relationship", e) for e in relationship] + [("quest", e) for e in quests])
    ids = [e.event_id for _, e in events]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate event ids in one call: {sorted(i for i in ids if ids.count(i) > 1)}")
    if not events:
        return CardUpdate(get_cards(r, session_id, npc_entry_id), [], [])
    rk = rkeys.card(session_id, npc_entry_id, "relationship")
    qk = rkeys.card(session_id, npc_entry_id, "quest")
    ak = rkeys.card_applied(session_id, npc_entry_id)
    ok = rkeys.card_applied_order(session_id, npc_entry_id)
    uk = rkeys.undone(session_id)
    turn_ids = list(dict.fromkeys(e.turn_id for _, e in events if e.turn_id))
    for attempt in range(max_attempts):
        with r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(rk, qk, ak, ok, uk)
                raw_rel, raw_quest = pipe.mget(rk, qk)
                seen = pipe.hmget(ak, ids)
                undone = ({t for t, hit in zip(turn_ids, pipe.smismember(uk, turn_ids)) if hit}
                          if turn_ids else set())
                cards = Cards(_load(RelationshipCard, raw_rel, rk), _load(QuestCard, raw_quest, qk))
                now = time.time()
                applied, duplicates = [], []
                for (kind, e), prior in zip(events, seen):
                    if e.turn_id in undone:  # a rollback undid its turn (memory.fencing)
                        continue
                    if prior is not None:
                        duplicates.append(json.loads(prior))
                        continue
                    if kind == "relationship":
                        effects = apply_relationship_event(cards.relationship, e)
                    else:
                        effects = apply_quest_event(cards.quest, e)
                    applied.append({"card": kind, **e.model_dump(exclude_none=True), **effects,
                                    "applied_at": now})
                if not applied:
                    pipe.unwatch()
                    return CardUpdate(cards, [], duplicates)
                changed = {a["card"] for a in applied}
                trimmed = 0
                if "relationship" in changed:
                    cards.relationship.rev += 1
                    trimmed += fit_card(cards.relationship)
                if "quest" in changed:
                    cards.quest.rev += 1
                    trimmed += fit_card(cards.quest)
                excess = pipe.zcard(ok) + len(applied) - APPLIED_CAP
                evict = [m.decode() for m in pipe.zrange(ok, 0, excess - 1)] if excess > 0 else []
                pipe.multi()
                if "relationship" in changed:
                    pipe.set(rk, dump_card(cards.relationship))
                if "quest" in changed:
                    pipe.set(qk, dump_card(cards.quest))
                pipe.hset(ak, mapping={a["event_id"]: json.dumps(a) for a in applied})
                pipe.zadd(ok, {a["event_id"]: now for a in applied})
                # tells the dialogue servers' hot caches that these cards changed
                pipe.hincrby(rkeys.memory_versions(session_id), str(npc_entry_id), 1)
                for key in (rk, qk, ak, ok, rkeys.memory_versions(session_id)):
                    pipe.expire(key, session_ttl_s())  # rolling session TTL
                # salient memories and the emotional trajectory (memory.summaries), once per event
                queue_card_memories(pipe, session_id, npc_entry_id, applied,
                                    cards.relationship if "relationship" in changed else None)
                if evict:
                    pipe.hdel(ak, *evict)
                    pipe.zrem(ok, *evict)
                pipe.execute()
                return CardUpdate(cards, applied, duplicates, trimmed)
            except redis.WatchError:
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
    raise CardConflict(f"cards of NPC {npc_entry_id} in session {session_id} kept changing "
                       f"for {max_attempts} attempts")


def turn_events(turn_id: str, seq: int | None, relationship: Iterable = (),
                quests: Iterable = ()) -> tuple[list[RelationshipEvent], list[QuestEvent]]:
    """Card events of one analysed turn: item ``i`` of the analysis's ``relationship`` list
    (objects with ``kind``, ``detail``, ``intensity``) gets id ``{turn_id}:r{i}``, item ``i`` of
    ``quests`` (``kind``, ``name``, ``detail``) ``{turn_id}:q{i}``; an item repeating an
    earlier one of the same list is left out (a small model repeats itself).

    Raises:
        pydantic.ValidationError: an item is not a valid event.
    """
    rel, seen = [], set()
    for i, c in enumerate(relationship):
        if (c.kind, c.detail) not in seen:
            seen.add((c.kind, c.detail))
            rel.append(RelationshipEvent(event_id=f"{turn_id}:r{i}", kind=c.kind, detail=c.detail,
                                         intensity=c.intensity, turn_id=turn_id, seq=seq))
    qs, seen = [], set()
    for i, c in enumerate(quests):
        if (c.kind, c.name, c.detail) not in seen:
            seen.add((c.kind, c.name, c.detail))
            qs.append(QuestEvent(event_id=f"{turn_id}:q{i}", kind=c.kind, name=c.name,
                                 detail=c.detail, turn_id=turn_id, seq=seq))
    return rel, qs


# --------------------------------------------------------------------------- prompts

_TRUST_WORDS = ((50, "deep trust"), (15, "trusting"), (-14, "neutral"), (-49, "wary"),
                (SCORE_MIN, "deep distrust"))
_AFFINITY_WORDS = ((50, "devoted"), (15, "fond"), (-14, "neutral"), (-49, "cold"),
                   (SCORE_MIN, "hostile"))


def _word(value: int, words) -> str:
    return next(w for threshold, w in words if value >= threshold)


def _bare(text: str) -> str:
    """A detail without its closing full stop (the prompt line adds its own punctuation)."""
    return text.rstrip(" .")


def _texts(items, fmt=lambda d: _bare(d.text), newest_first: bool = True) -> str:
    seq = list(reversed(items)) if newest_first else list(items)
    return "; ".join(fmt(d) for d in seq)


def card_lines(cards: Cards) -> list[str]:
    """The cards as prompt lines in the NPC's second person, most important first: scores,
    betrayals, open promises, life saved, broken and kept promises, active quests, flags,
    gifts, insults, finished quests. Empty for a card pair that never changed."""
    rel, quest = cards.relationship, cards.quest
    lines: list[str] = []
    n = rel.counts.get
    if rel.rev:
        lines.append(f"Trust in the player: {rel.trust:+d} of 100 ({_word(rel.trust, _TRUST_WORDS)}); "
                     f"affinity: {rel.affinity:+d} of 100 ({_word(rel.affinity, _AFFINITY_WORDS)}).")
    if rel.betrayals:
        lines.append("The player betrayed you: "
                     + _texts(rel.betrayals, lambda b: f"{_bare(b.text)} (severity {b.severity}/10)") + ".")
    elif n("betrayal"):
        lines.append(f"The player betrayed you {n('betrayal')} time(s).")
    by_status = {s: [p for p in rel.promises if p.status == s] for s in ("made", "kept", "broken")}
    if by_status["made"]:
        lines.append("Promises the player has yet to keep: " + _texts(by_status["made"]) + ".")
    if rel.saved_life:
        lines.append("The player saved your life: " + _texts(rel.saved_life) + ".")
    elif n("saved_life"):
        lines.append(f"The player saved your life {n('saved_life')} time(s).")
    if by_status["broken"]:
        lines.append("Promises the player broke: " + _texts(by_status["broken"]) + ".")
    if by_status["kept"]:
        lines.append("Promises the player kept: " + _texts(by_status["kept"]) + ".")
    active = [q for q in quest.quests if q.status == "active"]
    if active:
        lines.append("Quests between you and the player: " + _texts(
            active, lambda q: q.name + (f" (latest: {_bare(q.milestones[-1].text)})" if q.milestones
                                        else f" (goal: {_bare(q.goal)})" if q.goal else "")) + ".")
    if quest.flags:
        lines.append("Story flags: " + ", ".join(f"{f.name}={f.value}" for f in reversed(quest.flags)) + ".")
    if n("gift"):
        latest = f"; the latest: {_bare(rel.gifts[-1].text)}" if rel.gifts else ""
        lines.append(f"Gifts from the player: {n('gift')}{latest}.")
    if n("insult"):
        latest = f"; the latest: {_bare(rel.insults[-1].text)}" if rel.insults else ""
        lines.append(f"Insults from the player: {n('insult')}{latest}.")
    closed = [q for q in quest.quests if q.status != "active"]
    if closed:
        lines.append("Finished quests: " + _texts(closed, lambda q: f"{q.name} ({q.status})") + ".")
    return lines


def render_cards(cards: Cards, budget_chars: int) -> str:
    """The cards as prompt text of at most ``budget_chars`` characters: whole lines in
    ``card_lines`` order; the first line that does not fit is cut at a word with ``...`` (when
    at least 24 characters are left) and the rest is left out. '' when nothing to say."""
    out: list[str] = []
    used = 0
    for line in card_lines(cards):
        need = len(line) + (1 if out else 0)
        if used + need <= budget_chars:
            out.append(line)
            used += need
            continue
        room = budget_chars - used - (1 if out else 0)
        if room >= 24:
            cut = line[: room - 3].rsplit(" ", 1)[0].rstrip(" ,;:")
            out.append(cut + "...")
        break
    return "\n".join(out)


def analysis_hints(cards: Cards, budget_chars: int = 300) -> str:
    """What the analysis model should know to name existing promises and quests: the open
    promises and active quests, at most ``budget_chars`` characters ('' when none)."""
    parts = []
    open_promises = [_bare(p.text) for p in cards.relationship.promises if p.status == "made"]
    if open_promises:
        parts.append("Open promises of the player: " + "; ".join(reversed(open_promises)) + ".")
    active = [q.name for q in cards.quest.quests if q.status == "active"]
    if active:
        parts.append("Active quests: " + "; ".join(reversed(active)) + ".")
    text = " ".join(parts)
    return text if len(text) <= budget_chars else text[: budget_chars - 3].rsplit(" ", 1)[0] + "..."


def simulation_signals(r: redis.Redis, session_id: str, npc_entry_id: int) -> tuple[int, float]:
    """What the world simulation ranks an off-screen NPC by (``memory.simulation``): the
    number of open threads with the player (promises still ``made`` plus ``active`` quests)
    and the relationship's strength, ``max(|trust|, |affinity|) / 100`` in [0, 1]. A corrupt
    card counts as none (it is reported where it is applied)."""
    try:
        cards = get_cards(r, session_id, npc_entry_id)
    except CardCorrupt:
        return 0, 0.0
    rel = cards.relationship
    threads = (sum(p.status == "made" for p in rel.promises)
               + sum(q.status == "active" for q in cards.quest.quests))
    return threads, max(abs(rel.trust), abs(rel.affinity)) / SCORE_MAX
