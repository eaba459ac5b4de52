"""Domain logic without the model server: vector index and its sync, composite documents,
session notes (idempotency and write fencing), cleaners, prompts and schemas, JSON repair,
migrations against the models, and the Celery queue topology."""

from __future__ import annotations

import re
import threading
import time
import uuid
from types import SimpleNamespace

import jinja2
import numpy as np
import pytest
from sqlalchemy import select

from memory.composite import base_lore, composite_document, content_hash
from memory.db import session_scope
from memory.entities import clean_title, slug
from memory.notes import MAX_NOTE_CHARS, apply_note_update, clean_note
from memory.vector_index import (
    VectorIndex,
    VectorSync,
    load_from_db,
    publish_upsert,
    session_scope as vscope_session,
    world_scope,
)
from models import LoreEntry, SessionNote, SessionNoteRevision, StoredVector

DIM = 8


def _unit(*values: float, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def _basis(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


# --------------------------------------------------------------------------- vector index


def test_upsert_replaces_by_id():
    index = VectorIndex(DIM)
    index.upsert("world:1", [10, 11], np.stack([_basis(0), _basis(1)]))
    assert index.size("world:1") == 2
    index.upsert("world:1", [10], _basis(2)[None, :])  # replace id 10
    assert index.size("world:1") == 2
    assert sorted(index.ids("world:1").tolist()) == [10, 11]
    hits = index.search("world:1", _basis(2), k=2)
    assert hits[0].lore_entry_id == 10
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].scope == "world:1"
    # the old vector of id 10 is gone: nothing matches the first axis any more
    assert all(h.score < 0.5 for h in index.search("world:1", _basis(0), k=2))


def test_upsert_rejects_mismatched_ids():
    index = VectorIndex(DIM)
    with pytest.raises(ValueError):
        index.upsert("world:1", [1, 2], _basis(0)[None, :])


def test_remove_and_size():
    index = VectorIndex(DIM)
    index.upsert("world:1", [1, 2, 3], np.stack([_basis(0), _basis(1), _basis(2)]))
    index.upsert("session:a", [1], _basis(3)[None, :])
    assert index.size() == 4
    assert index.remove("world:1", [2, 99]) == 1
    assert index.size("world:1") == 2
    assert sorted(index.ids("world:1").tolist()) == [1, 3]
    assert 2 not in [h.lore_entry_id for h in index.search("world:1", _basis(1), k=5)]
    assert index.remove("nope", [1]) == 0
    assert index.size("nope") == 0
    assert index.search("nope", _basis(0), k=3) == []


def test_search_is_best_first_and_bounded_by_k():
    index = VectorIndex(DIM)
    index.upsert("world:1", [1, 2, 3], np.stack([_unit(1, 0), _unit(1, 1), _unit(0, 1)]))
    hits = index.search("world:1", _unit(1, 0.2), k=2)
    assert [h.lore_entry_id for h in hits] == [1, 2]
    assert hits[0].score >= hits[1].score


def test_search_session_merges_scopes_and_session_overrides_world():
    index = VectorIndex(DIM)
    world_id, sid = 7, "s1"
    # world lore: entries 1, 2, 3
    index.upsert(world_scope(world_id), [1, 2, 3], np.stack([_basis(0), _basis(1), _basis(2)]))
    # the session has its own document for entry 1, pointing elsewhere, and a new entry 4
    index.upsert(vscope_session(sid), [1, 4], np.stack([_unit(0, 0, 0, 1, 1), _basis(5)]))

    hits = index.search_session(world_id, sid, _basis(0), k=10)
    ids = [h.lore_entry_id for h in hits]
    assert sorted(ids) == [1, 2, 3, 4]
    assert len(ids) == len(set(ids))  # entry 1 appears once
    one = next(h for h in hits if h.lore_entry_id == 1)
    assert one.scope == vscope_session(sid)  # from the session scope, not the world's
    assert one.score < 0.5  # the world's vector (a perfect match) is excluded
    assert {h.scope for h in hits if h.lore_entry_id in (2, 3)} == {world_scope(world_id)}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    # the session document is found through its own vector
    best = index.search_session(world_id, sid, _unit(0, 0, 0, 1, 1), k=1)
    assert [(h.lore_entry_id, h.scope) for h in best] == [(1, vscope_session(sid))]
    # another session of the same world sees the world's document for entry 1
    other = index.search_session(world_id, "s2", _basis(0), k=1)
    assert [(h.lore_entry_id, h.scope) for h in other] == [(1, world_scope(world_id))]
    # k bounds the merged list
    assert len(index.search_session(world_id, sid, _basis(0), k=2)) == 2


def test_vector_sync_delivers_published_upsert_to_another_index():
    from memory.nearline import get_redis

    r = get_redis()
    index = VectorIndex(DIM)
    sync = VectorSync(index, r, block_ms=200)
    sync.start_id()
    scope = f"session:sync-{uuid.uuid4().hex}"
    vec = _unit(0.3, 0.4, 0.5)
    publish_upsert(r, scope, 4242, vec)
    applied = 0
    for _ in range(20):  # poll until the message is read (bounded)
        applied += sync.poll()
        if index.size(scope):
            break
    assert applied >= 1
    assert index.ids(scope).tolist() == [4242]
    hit = index.search(scope, vec, k=1)[0]
    assert hit.lore_entry_id == 4242 and hit.score == pytest.approx(1.0, abs=1e-5)
    # a replayed position is idempotent: re-reading from the start does not duplicate
    sync.last_id = "0-0"
    while sync.poll():
        pass
    assert index.size(scope) == 1


def test_vector_sync_ignores_other_dimensions():
    from memory.nearline import get_redis

    r = get_redis()
    index = VectorIndex(DIM)
    sync = VectorSync(index, r, block_ms=200)
    sync.start_id()
    scope = f"session:dim-{uuid.uuid4().hex}"
    publish_upsert(r, scope, 1, np.ones(DIM + 1, dtype=np.float32))
    publish_upsert(r, scope, 2, _basis(1))
    for _ in range(20):
        sync.poll()
        if index.size(scope):
            break
    assert index.ids(scope).tolist() == [2]


def test_load_from_db_after_embedding(light_world, game_session):
    from inference.embedding import get_embedder
    from memory.nearline import get_redis
    from memory.vectors import embed_entry, embed_world_base

    embedder = get_embedder()
    r = get_redis()
    world_id, sid = light_world["id"], game_session["id"]
    n_entries = len(light_world["spec"].entries)
    baker = _entry(world_id, "baker_27")

    with session_scope() as s:
        # the world's base lore is already embedded: re-embedding changes nothing
        assert embed_world_base(s, r, embedder, world_id) == 0
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                          event="The baker lost his rolling pin.", idempotency_key=uuid.uuid4().hex,
                          rewrite=lambda t, lore, note, ev: ("The baker lost his rolling pin.", 0))
    with session_scope() as s:
        result = embed_entry(s, r, embedder, baker.id, sid)
    assert result.status == "embedded"
    assert result.scope == vscope_session(sid)
    assert result.document == composite_document(base_lore(baker.title, baker.content),
                                                 "The baker lost his rolling pin.")
    with session_scope() as s:  # same document again: a no-op
        assert embed_entry(s, r, embedder, baker.id, sid).status == "unchanged"
        stored = s.scalar(select(StoredVector).where(StoredVector.scope == vscope_session(sid),
                                                     StoredVector.lore_entry_id == baker.id))
        assert stored.document == result.document
        assert stored.content_hash == content_hash(result.document, embedder.name)

    index = VectorIndex(embedder.dim)
    with session_scope() as s:
        loaded = load_from_db(index, s)
    assert loaded >= n_entries
    assert index.size(world_scope(world_id)) >= n_entries
    assert index.ids(vscope_session(sid)).tolist() == [baker.id]
    query = embedder.embed([result.document])[0]
    hits = index.search_session(world_id, sid, query, k=5)
    assert (hits[0].lore_entry_id, hits[0].scope) == (baker.id, vscope_session(sid))
    assert [h.lore_entry_id for h in hits].count(baker.id) == 1


# --------------------------------------------------------------------------- composite documents


def test_composite_document_exact_format():
    assert composite_document("A baker.", "He lost his pin.") == (
        "[Base Lore]\nA baker.\n\n[Session-Specific Notes]\nHe lost his pin."
    )


@pytest.mark.parametrize("note", [None, "", "   \n\t "])
def test_composite_document_without_note(note):
    doc = composite_document("A baker.", note)
    assert doc == "[Base Lore]\nA baker."
    assert "[Session-Specific Notes]" not in doc


def test_content_hash_depends_on_document_and_embedder():
    doc = composite_document("A baker.", "note")
    h = content_hash(doc, "all-MiniLM-L6-v2")
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == content_hash(doc, "all-MiniLM-L6-v2")
    assert h != content_hash(doc, "mistral-embed")
    assert h != content_hash(composite_document("A baker.", "other"), "all-MiniLM-L6-v2")


# --------------------------------------------------------------------------- session notes


def _revisions(note_id: int) -> list[SessionNoteRevision]:
    with session_scope() as s:
        return list(s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note_id)
                              .order_by(SessionNoteRevision.version)))


def _note(session_id: str, entry_id: int) -> SessionNote | None:
    with session_scope() as s:
        return s.scalar(select(SessionNote).where(SessionNote.session_id == session_id,
                                                  SessionNote.lore_entry_id == entry_id))


def _appending(calls: list | None = None):
    def rewrite(title, lore, note, event):
        if calls is not None:
            calls.append((title, lore, note, event))
        return (f"{note} {event}".strip(), 3)
    return rewrite


def test_first_update_creates_version_1_and_duplicate_is_a_noop(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    calls: list = []
    key = f"test:{uuid.uuid4().hex}"
    with session_scope() as s:
        first = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The player bought bread.", idempotency_key=key,
                                  rewrite=_appending(calls), turn_id="t1", task_id="task1")
    assert first.status == "written"
    assert first.version == 1 and first.before == "" and first.after == "The player bought bread."
    assert first.tokens == 3
    assert calls == [(baker.title, baker.content, "", "The player bought bread.")]
    note = _note(sid, baker.id)
    assert note.version == 1 and note.content == "The player bought bread."
    assert note.last_updated_turn_id == "t1"
    revs = _revisions(note.id)
    assert [(r.version, r.previous_content, r.content, r.event_summary, r.turn_id, r.task_id, r.cause)
            for r in revs] == [(1, "", "The player bought bread.", "The player bought bread.",
                                "t1", "task1", "turn")]

    with session_scope() as s:
        again = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The player bought bread.", idempotency_key=key,
                                  rewrite=_appending(calls))
    assert again.status == "duplicate"
    assert again.version == 1 and again.after == "The player bought bread."
    assert len(calls) == 1  # the rewriter is not asked again
    assert len(_revisions(note.id)) == 1
    assert _note(sid, baker.id).version == 1
    with session_scope() as s:  # base lore is never written
        assert s.get(LoreEntry, baker.id).content == baker.content


def test_second_update_builds_on_the_first(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    for event in ("The player bought bread.", "The player paid in silver."):
        with session_scope() as s:
            apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event=event,
                              idempotency_key=uuid.uuid4().hex, rewrite=_appending())
    note = _note(sid, baker.id)
    assert note.version == 2
    assert note.content == "The player bought bread. The player paid in silver."
    revs = _revisions(note.id)
    assert [r.version for r in revs] == [1, 2]
    assert revs[1].previous_content == revs[0].content


def test_concurrent_updates_are_fenced_and_both_land(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    both_read = threading.Barrier(2)
    seen: dict[str, list[str]] = {"A": [], "B": []}
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def run(name: str, event: str) -> None:
        def rewrite(title, lore, note, ev):
            seen[name].append(note)
            if len(seen[name]) == 1:
                both_read.wait(timeout=30)  # both threads hold the same version before writing
            time.sleep(0.3)
            return (f"{note} {ev}".strip(), 1)

        try:
            with session_scope() as s:  # one DB session per thread
                results[name] = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                                  event=event, idempotency_key=uuid.uuid4().hex,
                                                  rewrite=rewrite)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("A", "The oven broke at dawn.")),
               threading.Thread(target=run, args=("B", "A cat stole a loaf."))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert {r.status for r in results.values()} == {"written"}
    assert sorted(r.version for r in results.values()) == [1, 2]
    # both read version 0 first; the one that lost the race rewrote from the fresh note
    assert seen["A"][0] == "" and seen["B"][0] == ""
    assert sorted(len(v) for v in seen.values()) == [1, 2]

    note = _note(sid, baker.id)
    assert note.version == 2
    assert "The oven broke at dawn." in note.content
    assert "A cat stole a loaf." in note.content
    revs = _revisions(note.id)
    assert [r.version for r in revs] == [1, 2]
    assert revs[1].previous_content == revs[0].content
    assert revs[1].content == note.content


def test_rewriter_failure_leaves_note_unchanged(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    with session_scope() as s:
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="The player waved.",
                          idempotency_key=uuid.uuid4().hex, rewrite=_appending())

    def broken(title, lore, note, event):
        raise RuntimeError("model down")

    failed_key = uuid.uuid4().hex
    with pytest.raises(RuntimeError, match="model down"):
        with session_scope() as s:
            apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                              event="The player shouted.", idempotency_key=failed_key,
                              rewrite=broken)
    note = _note(sid, baker.id)
    assert note.version == 1 and note.content == "The player waved."
    assert len(_revisions(note.id)) == 1
    # the failed update was not recorded as done: a retry with the same key writes
    with session_scope() as s:
        retry = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The player shouted.", idempotency_key=failed_key,
                                  rewrite=_appending())
    assert retry.status == "written" and retry.version == 2


def test_update_of_unknown_entry_raises_lookup_error(game_session):
    with session_scope() as s:
        with pytest.raises(LookupError):
            apply_note_update(s, session_id=game_session["id"], lore_entry_id=10**9,
                              event="x", idempotency_key=uuid.uuid4().hex, rewrite=_appending())


@pytest.mark.parametrize("bad_rewrite, reason", [
    ("New Session Note:", "empty rewrite"), ("   ", "empty rewrite"),
    ("x" * 1201, "rewrite of 1201 characters over the 1200-character cap")],
    ids=["label-only", "blank", "over-cap"])
def test_empty_or_oversized_rewrite_appends_the_event_and_keeps_the_note(
        game_session, light_world, bad_rewrite, reason):
    assert len("x" * 1201) > MAX_NOTE_CHARS
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    with session_scope() as s:
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="The player waved.",
                          idempotency_key=uuid.uuid4().hex, rewrite=_appending())
    key = uuid.uuid4().hex
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                event="The player shouted a greeting.", idempotency_key=key,
                                rewrite=lambda *a: (bad_rewrite, 0), game_minutes=24 * 60 + 65)
    assert (res.status, res.mode, res.reason) == ("written", "appended", reason)
    note = _note(sid, baker.id)
    assert note.version == 2
    assert note.content == "The player waved.\n[Day 2, 01:05] The player shouted a greeting."
    with session_scope() as s:
        rev = s.scalar(select(SessionNoteRevision).where(SessionNoteRevision.idempotency_key == key))
    assert rev.previous_content == "The player waved." and rev.content == note.content


# --------------------------------------------------------------------------- cleaners


@pytest.mark.parametrize("raw, expected", [
    ("New Session Note: The baker is tired.", "The baker is tired."),
    ("  The baker is tired.  ", "The baker is tired."),
    ("[Entity]: Baker\nThe baker smiled.", "The baker smiled."),
    ("[Original Lore (Static)]: A baker.\nHe sold the oven.", "He sold the oven."),
    ("Session Note:\nHe sold the oven.\nHe is poor now.", "He sold the oven.\nHe is poor now."),
    ("[Session Note]: He left town.", "He left town."),
    ("", ""),
])
def test_clean_note(raw, expected):
    assert clean_note(raw) == expected


def test_clean_note_bounds_length_at_a_sentence_end():
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    out = clean_note(text)
    assert 0 < len(out) <= MAX_NOTE_CHARS
    assert out.endswith(".")
    assert text.startswith(out)
    no_stop = "x" * (MAX_NOTE_CHARS + 300)
    assert clean_note(no_stop) == "x" * MAX_NOTE_CHARS


@pytest.mark.parametrize("raw, expected", [
    ("Old Marta (location)", "Old Marta"),
    ("Silver Sword (Item) ", "Silver Sword"),
    ("  Brother Tam (character)", "Brother Tam"),
    ("Marta (the elder)", "Marta"),
    ("Gina (char)", "Gina"),
    ("Gina (d2", "Gina"),
    ("Gina (DG)", "Gina"),
    ("Plain Name", "Plain Name"),
    ("(item)", ""),  # nothing left after the label: no title
])
def test_clean_title(raw, expected):
    assert clean_title(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Old Marta's Boat", "old-marta-s-boat"),
    ("  The Crypt!  ", "the-crypt"),
    ("!!!", "entity"),
    ("", "entity"),
    ("Café Noël", "caf-no-l"),
])
def test_slug(raw, expected):
    assert slug(raw) == expected


def test_slug_is_bounded():
    out = slug("word " * 40)
    assert len(out) <= 60 and re.fullmatch(r"[a-z0-9-]+", out)


# --------------------------------------------------------------------------- prompts and schemas


def _props_named(node, name: str):
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and name in props:
            yield props[name]
        for v in node.values():
            yield from _props_named(v, name)
    elif isinstance(node, list):
        for v in node:
            yield from _props_named(v, name)


@pytest.mark.parametrize("name", ["analysis", "simulation"])
def test_schema_fills_enum_everywhere(name):
    import prompts

    keys = ["baker_27", "town square_0"]
    filled = prompts.schema(name, {"lore_entry_id": keys})
    found = list(_props_named(filled, "lore_entry_id"))
    assert found and all(p["enum"] == keys for p in found)
    # the cached original is not modified
    assert all(p["enum"] == [] for p in _props_named(prompts.schema(name), "lore_entry_id"))


def test_schema_empty_enum_raises():
    import prompts

    with pytest.raises(ValueError):
        prompts.schema("analysis", {"lore_entry_id": []})


def test_schema_unknown_raises():
    import prompts

    with pytest.raises(FileNotFoundError):
        prompts.schema("no_such_schema")


def _template_contexts() -> dict[str, dict]:
    npc = {"title": "Baker", "content": "A baker who rises before dawn."}
    return {
        "dialogue": dict(npc=npc, note="He lost his rolling pin.",
                         cards="Trust in the player: +20 of 100 (trusting).",
                         memories="The player came to town at dusk.\n- gift: A sack of rye flour.",
                         recent_turns=[{"player_text": "Hello there", "npc_text": "Fresh rolls!"}],
                         retrieved=[("Town Square", "The square in the middle of town.")],
                         player_text="Do you have rye bread?"),
        "analysis": dict(npc_title="Baker", player_text="I found a silver key.",
                         npc_text="Keep it away from the crypt.",
                         entities=[SimpleNamespace(key="baker_27", title="Baker", entity_type="character")],
                         hints="Open promises of the player: bring rye flour."),
        "rewrite_note": dict(title="Baker", lore="A baker who rises before dawn.",
                             note="He lost his rolling pin.", event="He found it under the oven."),
        "consolidate_note": dict(title="Baker", lore="A baker who rises before dawn.",
                                 note="[Day 1, 06:00] He lost his rolling pin.", max_chars=400),
        "create_entity": dict(entity_type="item", creation_summary="A silver key with a bat on it."),
        "summarize_session": dict(player_name="Ann", previous="Ann came to town at dusk.",
                                  turns=[{"npc": "Baker", "player_text": "Any rye bread?",
                                          "npc_text": "Fresh at dawn."},
                                         {"npc": "Baker", "speaker": "the smith",
                                          "player_text": "Two loaves.", "npc_text": ""}]),
        "simulate_world": dict(world_title="Possibly Vampires", elapsed="2 hours",
                               now="day 1, 14:00",
                               targets=[{"key": "baker_27", "title": "Baker",
                                         "content": "A baker who rises before dawn.",
                                         "note": "He lost his rolling pin."}],
                               places=[{"key": "town square_0", "title": "town square"}],
                               recent=["The player found a silver key."]),
        "judge_reply": dict(npc_name="Baker", lore="A baker who rises before dawn.",
                            player_text="When do you get up?", npc_text="At noon, lazily."),
        "judge_consistency": dict(npc_name="Baker", question="When do you get up?",
                                  first="Before dawn.", second="At noon."),
    }


# what each rendered template must carry from its context (system text, user text)
_EXPECTED = {
    "dialogue": (["Baker", "A baker who rises before dawn.", "He lost his rolling pin.",
                  "[What you remember about the player]\nTrust in the player: +20 of 100 (trusting).",
                  "Town Square: The square in the middle of town.", "Player: Hello there",
                  "Baker: Fresh rolls!",
                  "[The story so far and what stayed with you]\nThe player came to town at dusk.\n"
                  "- gift: A sack of rye flour."], ["Do you have rye bread?"]),
    "summarize_session": (["running summary"], [
        "Player: Ann", "Summary so far: Ann came to town at dusk.",
        "- Ann to Baker: Any rye bread? / Baker: Fresh at dawn.",
        "- the smith to Baker: Two loaves.\n", '{"summary": text}']),
    "analysis": ([], ["- baker_27: Baker (character)", "Player said to Baker: I found a silver key.",
                      "Baker answered: Keep it away from the crypt.",
                      "Known between the player and Baker: Open promises of the player: bring rye flour.",
                      'List "relationship"', 'List "quests"']),
    "rewrite_note": ([], ["[Entity]: Baker", "[Original Lore (Static)]: A baker who rises before dawn.",
                          "[Current Session Note]: He lost his rolling pin.",
                          "[New Event]: He found it under the oven."]),
    "consolidate_note": ([], ["[Entity]: Baker",
                              "[Current Session Note]: [Day 1, 06:00] He lost his rolling pin.",
                              "at most 400 characters", "Formerly (until ...)"]),
    "create_entity": ([], ["new item",
                           "[Creation Summary]: A silver key with a bat on it."]),
    "simulate_world": ([], ["World: Possibly Vampires",
                            "Time elapsed off-screen: 2 hours (it is now day 1, 14:00)",
                            "- baker_27: Baker: A baker who rises before dawn. Lately: He lost his rolling pin.",
                            "- town square_0: town square", "during these 2 hours",
                            "- The player found a silver key."]),
    "judge_reply": ([], ["Character: Baker", "Lore: A baker who rises before dawn.",
                         "The player said: When do you get up?", "Baker replied: At noon, lazily.",
                         '"lore": "contradicts"', "hostile, cold, neutral, courteous, warm, cheerful"]),
    "judge_consistency": ([], ["The player asked Baker: When do you get up?",
                               "First answer: Before dawn.", "Second answer: At noon.",
                               '"agree": "no"']),
}


def test_every_template_is_covered():
    import prompts

    names = sorted(p.stem for p in (prompts.HERE / "templates").glob("*.j2"))
    assert names == sorted(_template_contexts())


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_messages_render_system_and_user(name):
    import prompts

    msgs = prompts.messages(name, **_template_contexts()[name])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert all(m["content"] == m["content"].strip() and m["content"] for m in msgs)
    system, user = msgs[0]["content"], msgs[1]["content"]
    want_system, want_user = _EXPECTED[name]
    for text in want_system:
        assert text in system, (text, system)
    for text in want_user:
        assert text in user, (text, user)
    assert "{{" not in system + user and "{%" not in system + user


def test_dialogue_user_message_is_the_player_text_and_optional_sections_vanish():
    import prompts

    msgs = prompts.messages("dialogue", npc={"title": "Baker", "content": "A baker."}, note="",
                            cards="", memories="", recent_turns=[], retrieved=[],
                            player_text="Hi!")
    assert msgs[1] == {"role": "user", "content": "Hi!"}
    assert "[What has happened" not in msgs[0]["content"]
    assert "[What you remember about the player]" not in msgs[0]["content"]
    assert "[Things you know about]" not in msgs[0]["content"]
    assert "[Recent conversation]" not in msgs[0]["content"]
    assert "[The story so far" not in msgs[0]["content"]


def test_dialogue_prompt_of_the_next_turn_shares_the_head_up_to_the_recent_turns():
    """Stable parts first, per-turn parts last: the next turn's prompt starts with the whole
    previous prompt up to the end of its recent turns (a prompt cache reuses that head)."""
    import prompts

    npc = {"title": "Baker", "content": "A baker of Saltmere who owes the miller."}
    common = {"npc": npc, "note": "The player bought bread.", "cards": "Trust: friendly.",
              "memories": "The player arrived at dawn."}
    turn1 = {"player_text": "Any news?", "npc_text": "The mill burned."}
    first = prompts.messages("dialogue", **common, recent_turns=[turn1],
                             retrieved=[("Mill", "The mill by the river.")],
                             evidence=["[day 1, 07:30] Player: I saw smoke."],
                             player_text="Who did it?")[0]["content"]
    second = prompts.messages("dialogue", **common,
                              recent_turns=[turn1, {"player_text": "Who did it?",
                                                    "npc_text": "Nobody knows."}],
                              retrieved=[("Lighthouse", "The old lighthouse.")],
                              evidence=["[day 1, 08:00] Player: Strange lights."],
                              player_text="And the lighthouse?")[0]["content"]
    head = first[: first.index("[Things you know about]")]
    assert second.startswith(head.rstrip())
    for stable in ("[Who you are]", "[What has happened", "[What you remember",
                   "[The story so far"):
        assert first.index(stable) < first.index("[Recent conversation]")
    assert (first.index("[Recent conversation]") < first.index("[Things you know about]")
            < first.index("[What was said earlier"))


def test_analysis_without_hints_leaves_the_known_line_out():
    import prompts

    ctx = dict(_template_contexts()["analysis"], hints="")
    assert "Known between" not in prompts.messages("analysis", **ctx)[1]["content"]


def test_rewrite_note_without_note_says_none_yet():
    import prompts

    ctx = dict(_template_contexts()["rewrite_note"], note="")
    assert "[Current Session Note]: (none yet)" in prompts.messages("rewrite_note", **ctx)[1]["content"]


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_messages_missing_variable_raises(name):
    import prompts

    ctx = _template_contexts()[name]
    for missing in ctx:
        partial = {k: v for k, v in ctx.items() if k != missing}
        with pytest.raises(jinja2.UndefinedError):
            prompts.messages(name, **partial)


def test_messages_unknown_template_raises():
    import prompts

    with pytest.raises(jinja2.TemplateNotFound):
        prompts.messages("no_such_template")


# A validator for the JSON-schema subset the schemas use (no jsonschema dependency).
def _valid(doc, schema) -> bool:
    t = schema.get("type")
    if "enum" in schema and schema["enum"] and doc not in schema["enum"]:
        return False
    if t == "object":
        if not isinstance(doc, dict):
            return False
        props = schema.get("properties", {})
        if any(k not in doc for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(doc) - set(props):
            return False
        return all(_valid(doc[k], props[k]) for k in doc if k in props)
    if t == "array":
        if not isinstance(doc, list):
            return False
        if not schema.get("minItems", 0) <= len(doc) <= schema.get("maxItems", 10**9):
            return False
        return all(_valid(x, schema.get("items", {})) for x in doc)
    if t == "string":
        if not isinstance(doc, str):
            return False
        if not schema.get("minLength", 0) <= len(doc) <= schema.get("maxLength", 10**9):
            return False
        return "pattern" not in schema or re.search(schema["pattern"], doc) is not None
    return True


def _extreme(schema, which: str):
    """A document at the schema's upper (``max``) or lower (``min``) bounds everywhere."""
    t = schema.get("type")
    if schema.get("enum"):
        return schema["enum"][-1]
    if t == "object":
        return {k: _extreme(v, which) for k, v in schema["properties"].items()}
    if t == "array":
        n = schema.get("maxItems", 3) if which == "max" else max(1, schema.get("minItems", 0))
        return [_extreme(schema["items"], which) for _ in range(n)]
    if t == "string":
        n = schema.get("maxLength", 50) if which == "max" else max(1, schema.get("minLength", 1))
        return "A" + "b" * (n - 1)
    raise AssertionError(f"unexpected schema node {schema}")


_SCHEMA_MODELS = {"analysis": "AnalysisOutput", "creation": "CreatedEntity",
                  "judge_consistency": "ConsistencyVerdict", "judge_reply": "ReplyVerdict",
                  "simulation": "SimulationOutput", "summary": "SessionSummary"}


def test_every_schema_has_a_model():
    import prompts

    names = sorted(p.stem for p in (prompts.HERE / "schemas").glob("*.json"))
    assert names == sorted(_SCHEMA_MODELS)


@pytest.mark.parametrize("which", ["max", "min"])
@pytest.mark.parametrize("name", sorted(_SCHEMA_MODELS))
def test_schema_bounds_agree_with_pydantic_models(name, which):
    import prompts
    from prompts import outputs

    schema = prompts.schema(name, {"lore_entry_id": ["baker_27", "town square_0"]})
    doc = _extreme(schema, which)
    assert _valid(doc, schema), doc  # the generated document is what the schema allows
    model = getattr(outputs, _SCHEMA_MODELS[name])
    parsed = model.model_validate(doc)
    assert parsed.model_dump() == doc  # nothing truncated or dropped


def test_example_outputs_validate_under_schemas_and_models():
    import prompts
    from prompts.outputs import AnalysisOutput, CreatedEntity, SimulationOutput

    keys = ["baker_27", "town square_0"]
    analysis = {"updates": [{"lore_entry_id": "baker_27",
                             "update_summary": "The baker learned the player found a silver key."}],
                "creations": [{"entity_type": "item",
                               "creation_summary": "A silver key engraved with a bat."}],
                "relationship": [{"kind": "gift", "detail": "The player gave the baker rye flour.",
                                  "intensity": 3}],
                "quests": [{"kind": "quest_started", "name": "The silver key",
                            "detail": "Find the door the key opens."}]}
    simulation = {"updates": [{"lore_entry_id": "baker_27", "update_summary": "He baked all night."},
                              {"lore_entry_id": "town square_0",
                               "update_summary": "Merchants set up their stalls."}]}
    creation = {"title": "Silver Key", "content": "A small silver key engraved with a bat.",
                "tags": ["key", "silver"]}
    assert _valid(analysis, prompts.schema("analysis", {"lore_entry_id": keys}))
    assert _valid(simulation, prompts.schema("simulation", {"lore_entry_id": keys}))
    assert _valid(creation, prompts.schema("creation"))
    a = AnalysisOutput.model_validate(analysis)
    assert a.updates[0].lore_entry_id == "baker_27" and a.creations[0].entity_type == "item"
    assert a.relationship[0].intensity == 3 and a.quests[0].kind == "quest_started"
    # the card lists are optional: an analysis without them has none
    bare = {"updates": analysis["updates"], "creations": []}
    assert _valid(bare, prompts.schema("analysis", {"lore_entry_id": keys}))
    assert AnalysisOutput.model_validate(bare).relationship == []
    sim = SimulationOutput.model_validate(simulation)
    assert [u.lore_entry_id for u in sim.updates] == keys
    assert CreatedEntity.model_validate(creation).title == "Silver Key"
    # and the validator is not vacuous
    assert not _valid({"updates": []}, prompts.schema("simulation", {"lore_entry_id": keys}))
    assert not _valid({**creation, "extra": 1}, prompts.schema("creation"))


def test_models_reject_what_schemas_forbid():
    from pydantic import ValidationError

    from prompts.outputs import AnalysisOutput, CreatedEntity

    with pytest.raises(ValidationError):
        AnalysisOutput.model_validate({"updates": [{"lore_entry_id": "baker_27", "update_summary": "ab"}],
                                       "creations": []})
    with pytest.raises(ValidationError):
        AnalysisOutput.model_validate({"updates": [], "creations": [
            {"entity_type": "monster", "creation_summary": "A big bat."}]})
    with pytest.raises(ValidationError):
        CreatedEntity.model_validate({"title": "X", "content": "short", "tags": []})
    update = [{"lore_entry_id": "baker_27", "update_summary": "The baker smiled."}]
    for bad in ({"relationship": [{"kind": "hug", "detail": "A warm hug.", "intensity": 2}]},
                {"relationship": [{"kind": "gift", "detail": "Rye flour.", "intensity": 11}]},
                {"quests": [{"kind": "quest_started", "name": "K", "detail": "Find it."}]},
                {"relationship": [{"kind": "gift", "detail": "Rye.", "intensity": 1}] * 3}):
        with pytest.raises(ValidationError):
            AnalysisOutput.model_validate({"updates": update, "creations": [], **bad})


def test_analysis_schema_card_kinds_match_memory_cards():
    import prompts
    from memory.cards import QUEST_KINDS, RELATIONSHIP_KINDS

    props = prompts.schema("analysis", {"lore_entry_id": ["baker_27"]})["properties"]
    assert props["relationship"]["items"]["properties"]["kind"]["enum"] == list(RELATIONSHIP_KINDS)
    assert props["quests"]["items"]["properties"]["kind"]["enum"] == list(QUEST_KINDS)
    assert props["relationship"]["items"]["properties"]["intensity"]["enum"] == list(range(1, 11))
    # optional lists: the model may leave them out; bounded for the small model's grammar
    schema = prompts.schema("analysis", {"lore_entry_id": ["baker_27"]})
    assert "relationship" not in schema["required"] and "quests" not in schema["required"]
    assert props["relationship"]["maxItems"] == 2 and props["quests"]["maxItems"] == 1


# --------------------------------------------------------------------------- JSON repair


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', {"a": 1}),
    ('{"a": 1,}', {"a": 1}),
    ('{"a": [1, 2', {"a": [1, 2]}),
    ('{"updates": [{"lore_entry_id": "baker_27"}]', {"updates": [{"lore_entry_id": "baker_27"}]}),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ("[1, 2,]", [1, 2]),
])
def test_parse_json_repairs(text, expected):
    from inference.llm import parse_json

    assert parse_json(text) == expected


def test_literal_empty_object_parses_but_is_not_an_analysis():
    """``{}`` is valid JSON, yet an analysis must state both lists: no silent empty answer."""
    from pydantic import ValidationError

    from inference.llm import parse_json
    from prompts.outputs import AnalysisOutput

    assert parse_json("{}") == {}
    with pytest.raises(ValidationError):
        AnalysisOutput.model_validate({})


@pytest.mark.parametrize("text", ["", "   \n", "... ]] }{", "no json here {"])
def test_parse_json_rejects_empty(text):
    from inference.llm import parse_json

    with pytest.raises(ValueError):
        parse_json(text)


# --------------------------------------------------------------------------- migrations


def test_alembic_schema_matches_models():
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import models
    from memory.db import get_engine

    with get_engine().connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "compare_server_default": False})
        diff = compare_metadata(ctx, models.Base.metadata)
    assert diff == []


# --------------------------------------------------------------------------- topology


def test_every_declared_task_is_registered_and_routed():
    import celeryconfig
    from contract.registry import TASKS
    from workers.celery_app import app, check_topology

    check_topology(app)
    ours = {n for n in app.tasks if n.startswith("npc_memory.")}
    assert ours == {n.value for n in TASKS}
    declared_queues = {q.name for q in celeryconfig.task_queues}
    for name, queue in ((n.value, s.queue) for n, s in TASKS.items()):
        assert name in app.tasks
        assert celeryconfig.task_routes[name]["queue"] == queue.value
        assert queue.value in declared_queues
        route = app.amqp.router.route({}, name, args=(), kwargs={})
        assert route["queue"].name == queue.value, name
        assert app.tasks[name].queue_name == queue.value


def test_queues_enum_matches_declared_queues():
    import celeryconfig
    from contract.names import Queues
    from contract.registry import TASKS

    assert {q.name for q in celeryconfig.task_queues} == {q.value for q in Queues}
    assert {s.queue for s in TASKS.values()} == set(Queues)


def test_undeclared_task_name_is_refused():
    from contract.payloads import Payload
    from tasks.base import enqueue, npc_task

    sent = []
    with pytest.raises(RuntimeError, match="npc_memory.nope"):
        npc_task("npc_memory.nope")
    with pytest.raises(RuntimeError):
        enqueue(lambda *a, **kw: sent.append(a), "npc_memory.nope", Payload())
    assert sent == []


def test_check_topology_detects_a_task_without_queue():
    from celery import Celery

    import celeryconfig
    from workers.celery_app import check_topology

    other = Celery("topology-test", set_as_current=False)
    other.config_from_object(celeryconfig)

    @other.task(name="npc_memory.rogue")
    def rogue():  # pragma: no cover - never run
        return None

    with pytest.raises(RuntimeError, match="rogue"):
        check_topology(other)


def test_check_topology_detects_a_table_entry_without_task(monkeypatch):
    import workers.celery_app as celery_app
    from contract.names import Queues
    from contract.payloads import Payload
    from contract.registry import TASKS, TaskSpec

    table = {**TASKS, "npc_memory.missing": TaskSpec("npc_memory.missing", Queues.EMBED, Payload)}
    monkeypatch.setattr(celery_app, "TASKS", table)
    with pytest.raises(RuntimeError, match="without task.*npc_memory.missing"):
        celery_app.check_topology(celery_app.app)


def test_create_entity_finds_existing_title_and_creates_once(game_session):
    """A creation whose title matches an existing entry (any case or punctuation) is not
    created; a new title is created once per idempotency key, flagged and keyed by slug.
    (Each summary names someone new: without a new name the model is not asked at all.)"""
    from memory.entities import create_entity
    from prompts.outputs import CreatedEntity

    calls = []

    def creator(title):
        def create(entity_type, summary):
            calls.append(summary)
            return CreatedEntity(title=title, content="Someone new in town, pale and polite.", tags=["x"]), 7
        return create

    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", creation_summary="The baker meets Count Vlad at the door.",
                            idempotency_key=f"t:{uuid.uuid4().hex}", create=creator("  BAKER "))
    assert res.status == "exists" and res.key == "baker_27"
    key = f"t:{uuid.uuid4().hex}"
    with session_scope() as s:
        made = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                             entity_type="character", creation_summary="A pale man, Count Vlad, arrives.",
                             idempotency_key=key, create=creator("Count Vlad (character)"))
    with session_scope() as s:
        again = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                              entity_type="character", creation_summary="A pale man, Count Vlad, arrives.",
                              idempotency_key=key, create=creator("Count Vlad"))
        entry = s.get(LoreEntry, made.entry_id)
        assert made.status == "created" and again.status == "duplicate"
        assert again.entry_id == made.entry_id and len(calls) == 2
        assert entry.title == "Count Vlad" and entry.key.startswith("count-vlad-")
        assert entry.is_dynamically_generated and entry.created_in_session_id == game_session["id"]


def test_coalescing_folds_queued_updates_into_one_rewrite(game_session, light_world):
    """Three updates queued for one note: the first rewrite folds all three (one model call,
    events in turn order); the other two tasks then find their events applied."""
    from memory.notes import PendingEvent

    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    keys = [f"co:{uuid.uuid4().hex}:{n}" for n in range(3)]
    queued = [PendingEvent(keys[2], "The baker burnt the rye.", None, "turn", 3.0),
              PendingEvent(keys[1], "The baker sold a pie.", None, "turn", 2.0),
              PendingEvent(keys[0], "The baker opened early.", None, "turn", 1.0)]
    seen = []

    def rewrite(title, lore, note, event):
        seen.append(event)
        return f"{note} {event}".strip(), 5

    with session_scope() as s:
        first = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The baker opened early.", idempotency_key=keys[0],
                                  rewrite=rewrite, pending=lambda: queued)
    assert first.status == "written" and set(first.folded) == set(keys)
    assert seen == ["1. The baker opened early.\n2. The baker sold a pie.\n3. The baker burnt the rye."]
    for key, text in ((keys[1], "The baker sold a pie."), (keys[2], "The baker burnt the rye.")):
        with session_scope() as s:
            res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event=text,
                                    idempotency_key=key, rewrite=rewrite, pending=lambda: queued)
        assert res.status == "coalesced" and res.version == first.version
    assert len(seen) == 1  # two model calls saved
    note = _note(sid, baker.id)
    assert note.version == 1 and "burnt the rye" in note.content


def test_coalescing_skips_events_already_applied(game_session, light_world):
    from memory.notes import PendingEvent

    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    a, b = f"a:{uuid.uuid4().hex}", f"b:{uuid.uuid4().hex}"
    with session_scope() as s:
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="Event A.",
                          idempotency_key=a, rewrite=_appending())
    seen = []

    def rewrite(title, lore, note, event):
        seen.append(event)
        return f"{note} {event}", 1

    stale = [PendingEvent(a, "Event A.", None, "turn", 1.0)]  # still listed, already applied
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="Event B.",
                                idempotency_key=b, rewrite=rewrite, pending=lambda: stale)
    assert seen == ["Event B."] and res.folded == (b,)
    assert _note(sid, baker.id).content.count("Event A.") == 1


@pytest.mark.parametrize("title, content_from, how", [
    ("Lady Elinore", None, "fuzzy"),
    ("The Night Kneader", "baker_27", "embedding"),
])
def test_creation_matches_existing_entity_fuzzily(game_session, light_world, title, content_from, how):
    """A near-identical title, or a text that embeds next to an existing document, resolves to
    that entry instead of creating a duplicate."""
    from inference.embedding import get_embedder
    from memory.entities import create_entity
    from prompts.outputs import CreatedEntity

    content = _entry(light_world["id"], content_from).content if content_from else "A fierce warrior."
    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", creation_summary=f"{title} came to town with Mirela Dusk.",
                            idempotency_key=f"t:{uuid.uuid4().hex}", embedder=get_embedder(),
                            create=lambda t, summary: (CreatedEntity(title=title, content=content[:800], tags=[]), 1))
    assert res.status == "exists" and res.matched_by == how
    assert res.key == ("lady elinor_49" if how == "fuzzy" else "baker_27")


def test_distinct_new_entity_is_created_not_matched(game_session, light_world):
    from inference.embedding import get_embedder
    from memory.entities import create_entity
    from prompts.outputs import CreatedEntity

    made = CreatedEntity(title="Captain Orsolya Vey", tags=[],
                         content="A sea captain who smuggles spices past the harbour chain at night.")
    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", creation_summary="Captain Orsolya Vey sails tonight.",
                            idempotency_key=f"t:{uuid.uuid4().hex}", embedder=get_embedder(),
                            create=lambda t, summary: (made, 1))
    assert res.status == "created" and res.matched_by == ""


def test_fifty_concurrent_updates_to_one_note_all_land(game_session, light_world):
    """50 updates of one note from 8 concurrent writers (own DB sessions): version fencing
    re-runs the losers, so every event is in the note and the history has 50 revisions."""
    from concurrent.futures import ThreadPoolExecutor

    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    events = [f"Event number {n}." for n in range(50)]

    def rewrite(title, lore, note, event):
        time.sleep(0.01)
        return f"{note} {event}".strip(), 1

    def one(event):
        with session_scope() as s:
            return apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event=event,
                                     idempotency_key=f"c50:{sid}:{event}", rewrite=rewrite,
                                     max_attempts=200).status

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, events))
    assert statuses == ["written"] * 50
    note = _note(sid, baker.id)
    assert note.version == 50
    assert all(e in note.content for e in events)
    with session_scope() as s:
        revs = s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note.id)
                         .order_by(SessionNoteRevision.version)).all()
    assert [r.version for r in revs] == list(range(1, 51))
    assert sorted(r.event_summary for r in revs) == sorted(events)
    assert all(revs[i].previous_content == revs[i - 1].content for i in range(1, 50))
