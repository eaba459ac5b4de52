"""The Redis key schema: every key the system reads or writes, built in one place.

Each key is a function of the ids it names (or a constant when it names none); its docstring
gives the Redis type and the shape of the value. Values are UTF-8; "JSON" means a JSON document
stored as a string (or as a hash value / set member where so said). Ids are rendered with
``str()``, so ``1`` and ``"1"`` name the same key.

Groups:

- the world's cached lore (``world:{world_id}:...``), written by ``memory.nearline``;
- one session (``session:{session_id}`` and ``session:{session_id}:...``): the session hash,
  its turns, notes, memory cards, witnesses, evidence, summaries and the bookkeeping that keeps
  writes idempotent;
- the indexes across sessions (``sessions:active``, ``sessions:simulated``), queued note
  updates (``note_pending:...``), the transactional outbox (``outbox:...``), parked dead letters
  (``dead_letters:parked``), task delivery counts (``deliveries:...``) and the vector update
  stream (``vectors:updates``);
- the inference side: dialogue slots (``llm:...``) and the LoRA registry and coordinator
  (``lora:...``); beat's schedule and lock live under :data:`BEAT_PREFIX`.

Session keys (the session hash, turns, seq, notes, cards, memory versions, witnesses, evidence,
summaries) expire ``SESSION_TTL_S`` (30 days by default) after their last write: a rolling TTL,
pushed back by every turn (``memory.nearline.session_ttl_s``).

Multi-key updates use MULTI/EXEC pipelines, never read-modify-write; card updates read under
WATCH and write in MULTI/EXEC (optimistic, re-run on conflict).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- the world


def world_entry(world_id: int, entry_id: int) -> str:
    """String, JSON ``{id, key, title, content, entity_type, world_id[, created_by_turn_id]}``:
    one cached lore entry (``memory.nearline.entry_doc``)."""
    return f"world:{world_id}:entry:{entry_id}"


def world_keys(world_id: int) -> str:
    """Hash entry key -> lore entry id of a world's base entries."""
    return f"world:{world_id}:keys"


def world_archetypes(world_id: int) -> str:
    """Hash lore entry id -> the character's archetype (lower case), written with the cached
    entries and by ``inference.lora.registry.set_character_archetype``; read by
    ``inference.lora.routing``."""
    return f"world:{world_id}:archetypes"


def occupants(world_id: int, location_id: int) -> str:
    """Set of the entry ids of the characters the world's relations place at a location
    (``located_in`` it, or in its ``contains``): the witnesses an event posted with that
    ``location`` gets (``memory.turns.resolve_witnesses``)."""
    return f"world:{world_id}:occupants:{int(location_id)}"


# --------------------------------------------------------------------------- one session


def session(session_id: str) -> str:
    """Hash ``world_id, player_name, created_at, game_minutes`` (the in-game clock),
    ``every_turns`` (a world tick every N turns, 0 off), ``tick_minutes`` (in-game minutes per
    tick): an open session."""
    return f"session:{session_id}"


def session_keys(session_id: str) -> str:
    """Hash entry key -> lore entry id of the entries created in the session."""
    return f"session:{session_id}:keys"


def turns(session_id: str) -> str:
    """List of JSON turns of the session, newest last, capped at ``memory.nearline.TURNS_CAP``."""
    return f"session:{session_id}:turns"


def seq(session_id: str) -> str:
    """Counter (string integer) of the session's turns; never reused, so the hot caches'
    check sees every turn and rollback."""
    return f"session:{session_id}:seq"


def events(session_id: str) -> str:
    """Hash posted event id -> JSON turn kwargs of the event's turn (``memory.turns``)."""
    return f"session:{session_id}:events"


def undone(session_id: str) -> str:
    """Set of the turn ids that rollbacks of the session undid (``memory.fencing``,
    ``memory.timeline``)."""
    return f"session:{session_id}:undone"


def note(session_id: str, entry_id: int) -> str:
    """String, the current text of the session note of a lore entry."""
    return f"session:{session_id}:note:{entry_id}"


def note_turns(session_id: str, entry_id: int) -> str:
    """String, JSON list of the turn ids the session note folds in, oldest first
    (``memory.notes.note_turn_ids``): a note's evidence without SQL."""
    return f"session:{session_id}:note_turns:{entry_id}"


def memory_versions(session_id: str) -> str:
    """Hash lore entry id -> counter, bumped in the same transaction as every write of the
    entry's session note or memory cards: what the dialogue servers' hot caches compare to
    know their copy is current (``memory.hot_cache``)."""
    return f"session:{session_id}:mver"


def touched(session_id: str) -> str:
    """Hash lore entry id -> unix time (float seconds) the entry was last touched in the
    session (its note written, or a turn addressed to it): recency for ``memory.ranking``."""
    return f"session:{session_id}:touched"


def witnesses(session_id: str) -> str:
    """Hash turn id -> JSON list of the entry ids of the characters who witnessed the turn
    (``memory.witnesses``)."""
    return f"session:{session_id}:witnesses"


def witnessed(session_id: str, npc_entry_id: int) -> str:
    """Set of the ``seq`` of the turns an NPC witnessed in the session (its evidence item ids
    are ``2 * seq`` and ``2 * seq + 1``)."""
    return f"session:{session_id}:witnessed:{int(npc_entry_id)}"


def evidence(session_id: str) -> str:
    """Hash evidence item id (``seq * 2 + part``) -> JSON item ``{turn_id, seq, part, speaker,
    event_id, created_at, game_minutes, text}`` (``memory.evidence``)."""
    return f"session:{session_id}:evidence"


def card(session_id: str, npc_entry_id: int, kind: str) -> str:
    """String, JSON memory card of an NPC in the session (<= 2 KB): ``kind`` ``relationship``
    (``memory.cards.RelationshipCard``) or ``quest`` (``memory.cards.QuestCard``)."""
    return f"session:{session_id}:card:{npc_entry_id}:{kind}"


def card_applied(session_id: str, npc_entry_id: int) -> str:
    """Hash event id -> JSON event as applied to the (session, NPC) cards (their idempotency
    bookkeeping, ``memory.cards``)."""
    return f"session:{session_id}:card:{npc_entry_id}:applied"


def card_applied_order(session_id: str, npc_entry_id: int) -> str:
    """Sorted set event id -> unix time applied, to keep the newest ``APPLIED_CAP`` ids."""
    return f"session:{session_id}:card:{npc_entry_id}:applied_order"


def card_applied_pattern(session_id: str) -> str:
    """``SCAN MATCH`` pattern of the session's :func:`card_applied` hashes, one per NPC with
    cards (the NPC's entry id is the fourth ``:``-separated part)."""
    return f"session:{session_id}:card:*:applied"


def summary(session_id: str) -> str:
    """String, JSON ``{summary, upto_seq, updated_at, audience}``: the rolling session summary
    (``memory.summaries``)."""
    return f"session:{session_id}:summary"


def salient(session_id: str, npc_entry_id: int) -> str:
    """Sorted set, member JSON ``{event_id, kind, detail, seq, at}`` -> importance: an NPC's
    most important card events (``memory.summaries``)."""
    return f"session:{session_id}:salient:{npc_entry_id}"


def trajectory(session_id: str, npc_entry_id: int) -> str:
    """Sorted set, member JSON ``{rev, trust, affinity, at}`` -> unix time: an NPC's
    relationship scores after every change (``memory.summaries``)."""
    return f"session:{session_id}:trajectory:{npc_entry_id}"


def simulated(session_id: str) -> str:
    """Sorted set lore entry id -> unix time the NPC was last simulated in the session."""
    return f"session:{session_id}:simulated"


def simulation_pending(session_id: str) -> str:
    """String, the tick id, held (with a TTL) while a simulation of the session is queued or
    running (``contract.send.request_simulation``)."""
    return f"session:{session_id}:simulation_pending"


def tick_clock(session_id: str, tick_id: str) -> str:
    """String integer, the session clock (minutes) tick ``tick_id`` set, so a re-run of the
    tick sets the same time (7 days)."""
    return f"session:{session_id}:tick_clock:{tick_id}"


def tick_result(session_id: str, tick_id: str) -> str:
    """String, JSON of what tick ``tick_id`` did to the session (chosen NPCs and updates), so a
    re-run repeats it exactly (first writer wins, 7 days)."""
    return f"session:{session_id}:tick_result:{tick_id}"


# --------------------------------------------------------------------------- across sessions

SESSIONS_ACTIVE = "sessions:active"
"""Sorted set session id -> unix time of the session's last activity."""

SESSIONS_SIMULATED = "sessions:simulated"
"""Sorted set session id -> unix time the session was last simulated."""


def note_pending(session_id: str, entry_key: str) -> str:
    """Hash idempotency key -> JSON ``{event, turn_id, cause, order, game_minutes}``: the
    updates queued for one session note, so a rewrite can fold them in (coalescing; 24 h)."""
    return f"note_pending:{session_id}:{entry_key}"


def note_pending_pattern(session_id: str) -> str:
    """``SCAN MATCH`` pattern of the session's :func:`note_pending` hashes."""
    return f"note_pending:{session_id}:*"


OUTBOX_TURNS = "outbox:turns"
"""Sorted set turn id -> unix time recorded: turns whose pipeline tasks are not yet known to be
in the broker (the transactional outbox, ``memory.nearline.record_turn`` / ``outbox_due``)."""

OUTBOX_PAYLOADS = "outbox:turn_payloads"
"""Hash turn id -> JSON turn, beside :data:`OUTBOX_TURNS`."""

DEAD_LETTERS_PARKED = "dead_letters:parked"
"""List of JSON dead letters that could not be written while the database was down
(``tasks.base.dead_letter``)."""


def deliveries(task_id: str) -> str:
    """String integer, how many times task ``task_id`` was delivered (7 days;
    ``tasks.base.count_delivery``)."""
    return f"deliveries:{task_id}"


VECTOR_UPDATES = "vectors:updates"
"""Stream of vector upserts and removals (``op=remove``), fields ``scope``, ``id``/``ids`` and
the vector (``memory.vector_index``)."""


# --------------------------------------------------------------------------- inference


def dialogue_inflight(base_url: str) -> str:
    """Sorted set slot id -> unix expiry time: the dialogue calls in flight on a model server
    (``inference.priority``); ``base_url`` without its trailing ``/``."""
    return f"llm:dialogue_inflight:{base_url.rstrip('/')}"


def dialogue_recent(base_url: str) -> str:
    """String ``1`` with a TTL, set while a dialogue call ran on the model server recently
    (``inference.priority``)."""
    return f"llm:dialogue_recent:{base_url.rstrip('/')}"


def lora_chain(archetype: str) -> str:
    """String, JSON chain ``{name, server_url, server_id, base_model, services, adapters}`` of
    an archetype (``inference.lora.registry``)."""
    return f"lora:chain:{archetype}"


LORA_CHAINS = "lora:archetypes"
"""Set of the registered archetype names (``inference.lora.registry``)."""

LORA_BROKEN = "lora:broken"
"""Hash adapter name -> why the server could not load it (``inference.lora.registry``)."""

LORA_NONE = "lora:none"
"""Never written: the key the LoRA route lookup reads when no world is given (an empty hash)."""

LORA_ALL = "lora:*"
"""``SCAN MATCH`` pattern of every LoRA key."""


def lora_loaded(server_url: str) -> str:
    """Sorted set adapter name -> unix time last used: adapters loaded on a model server
    (``inference.lora.coordinator``)."""
    return f"lora:loaded:{server_url}"


def lora_usage(name: str) -> str:
    """Hash ``requests``, ``loads``, ``unloads``, ``fallbacks`` (counters) and ``last_used``
    (unix time) of one adapter."""
    return f"lora:usage:{name}"


def lora_lock(server_url: str) -> str:
    """redis-py lock (a string token with a TTL) held while adapters load or unload on a
    model server."""
    return f"lora:lock:{server_url}"


BEAT_PREFIX = "npc_memory:beat:"
"""Prefix of celery-redbeat's schedule and single-beat lock keys (``celeryconfig``)."""
