"""The operations surface (``memory.ops``, its HTTP routes in ``workers.web`` and its CLI
commands) against the real PostgreSQL and Redis, with the real Celery worker where a task is
sent: note rollback, entity history, dead letters, the session's task ledger, task retry and
queue status."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update
from typer.testing import CliRunner

from contract.names import Queues
from memory import nearline, ops
from memory.db import get_engine, session_scope
from memory.notes import apply_note_update
from models import (
    DeadLetter,
    LoreEntry,
    SessionNote,
    SessionNoteRevision,
    StoredVector,
    TaskRecord,
    Turn,
)
from tests.procs import api_headers
from workers import queues


@pytest.fixture(scope="module")
def client():
    from workers.web import app

    with TestClient(app, headers=api_headers()) as c:
        yield c


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def _write_history(session_id: str, entry_id: int, texts: list[str]) -> int:
    """Write one note revision per text, each replacing the note (through the fenced write
    every note change uses: a rewrite that drops the previous note would be refused by
    ``apply_note_update``); returns the note id."""
    from memory.notes import PendingEvent, commit_revision

    with session_scope() as s:  # the first write creates the note
        first = apply_note_update(s, session_id=session_id, lore_entry_id=entry_id,
                                  event=texts[0], idempotency_key=f"test:{uuid.uuid4().hex}",
                                  rewrite=lambda title, lore, note, event: (event, 0))
    assert first.after == texts[0]
    for text in texts[1:]:
        with session_scope() as s:
            note = s.get(SessionNote, first.note_id)
            version, before = note.version, note.content
            s.rollback()
            key = f"test:{uuid.uuid4().hex}"
            assert commit_revision(s, note_id=first.note_id, version=version, before=before,
                                   after=text, event_summary=text, cause="turn",
                                   idempotency_key=key, applied=[PendingEvent(key, text)])
    return first.note_id


def _note(session_id: str, entry_id: int) -> SessionNote:
    with session_scope() as s:
        return s.scalar(select(SessionNote).where(SessionNote.session_id == session_id,
                                                  SessionNote.lore_entry_id == entry_id))


def _revisions(note_id: int) -> list[SessionNoteRevision]:
    with session_scope() as s:
        return list(s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note_id)
                              .order_by(SessionNoteRevision.version)))


def _status(task_id: str) -> str | None:
    with session_scope() as s:
        return s.scalar(select(TaskRecord.status).where(TaskRecord.task_id == task_id))


def _turn_payload(game: dict, npc_entry_id: int) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": game["id"], "world_id": game["world_id"],
            "seq": 1, "npc_entry_id": npc_entry_id, "player_text": "Is the bread fresh?",
            "npc_text": "Baked at dawn.", "latency_ms": 3.0, "created_at": time.time()}


def _archived(turn_id: str) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Turn).where(Turn.id == turn_id))


A = "The baker owes the player a loaf."
B = "The baker and the player quarrelled about the price of rye."
C = "The baker refuses to serve the player."


# --------------------------------------------------------------------------- rollback


def test_rollback_writes_a_new_revision_publishes_and_reembeds(client, worker, game_session, wait_for):
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    note_id = _write_history(sid, baker.id, [A, B, C])

    res = client.post(f"/v1/sessions/{sid}/notes/baker_27/rollback", json={"version": 1})
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["status"] == "written"
    assert (out["version"], out["previous_version"], out["rolled_back_to"]) == (4, 3, 1)
    assert out["content"] == A and out["note_id"] == note_id and out["embed_task_id"]

    note = _note(sid, baker.id)
    assert (note.version, note.content) == (4, A)
    revs = _revisions(note_id)
    assert [r.version for r in revs] == [1, 2, 3, 4]
    assert [r.content for r in revs[:3]] == [A, B, C]  # history is kept
    last = revs[-1]
    assert (last.cause, last.event_summary) == ("rollback", "rollback to version 1")
    assert (last.previous_content, last.content) == (C, A)
    assert last.idempotency_key == f"rollback:{note_id}:3->1"
    assert nearline.get_note(nearline.get_redis(), sid, baker.id) == A

    def embedded_with(text):
        def check():
            with session_scope() as s:
                v = s.scalar(select(StoredVector).where(StoredVector.scope == f"session:{sid}",
                                                        StoredVector.lore_entry_id == baker.id))
                return v is not None and text in v.document and v
        return check

    vec = wait_for(embedded_with(A), timeout=120)
    assert "[Session-Specific Notes]" in vec.document and C not in vec.document

    # the same rollback again is a no-op
    again = client.post(f"/v1/sessions/{sid}/notes/baker_27/rollback", json={"version": 1})
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "unchanged" and again.json()["version"] == 4
    assert len(_revisions(note_id)) == 4 and _note(sid, baker.id).version == 4

    # version 0 is the empty note; the composite document loses its notes section
    empty = client.post(f"/v1/sessions/{sid}/notes/baker_27/rollback", json={"version": 0})
    assert empty.status_code == 200, empty.text
    assert (empty.json()["version"], empty.json()["content"]) == (5, "")
    assert _revisions(note_id)[-1].previous_content == A
    doc = client.get(f"/v1/sessions/{sid}/entries/baker_27").json()["composite_document"]
    assert "[Session-Specific Notes]" not in doc
    assert nearline.get_note(nearline.get_redis(), sid, baker.id) == ""


def test_rollback_is_fenced_against_a_concurrent_write(game_session):
    """A note update that commits between the rollback's read and its write is not lost: the
    rollback re-reads and lands on top of it, as the next version."""
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    note_id = _write_history(sid, baker.id, [A, B, C])
    me = threading.current_thread()
    fired = []

    def concurrent_writer(conn, cursor, statement, parameters, context, executemany):
        if (fired or threading.current_thread() is not me
                or not statement.lstrip().upper().startswith("UPDATE SESSION_NOTES")):
            return
        fired.append(statement)
        with session_scope() as other:  # another worker's committed update_note
            other.execute(update(SessionNote).where(SessionNote.id == note_id)
                          .values(content="Concurrent news.", version=4))
            other.add(SessionNoteRevision(note_id=note_id, version=4, previous_content=C,
                                          content="Concurrent news.", event_summary="news",
                                          cause="turn", idempotency_key=f"t:{uuid.uuid4().hex}"))

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", concurrent_writer)
    try:
        with session_scope() as s:
            res = ops.rollback_note(s, sid, "baker_27", 2)
    finally:
        event.remove(engine, "before_cursor_execute", concurrent_writer)
    assert fired
    assert res["status"] == "written"
    assert (res["version"], res["previous_version"], res["content"]) == (5, 4, B)
    revs = _revisions(note_id)
    assert [r.version for r in revs] == [1, 2, 3, 4, 5]
    assert revs[3].content == "Concurrent news."
    assert (revs[4].previous_content, revs[4].content) == ("Concurrent news.", B)
    assert revs[4].idempotency_key == f"rollback:{note_id}:4->2"
    assert _note(sid, baker.id).version == 5


def test_rollback_unknown_things_are_404(client, game_session):
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    _write_history(sid, baker.id, [A])
    cases = [
        (f"/v1/sessions/{sid}/notes/baker_27/rollback", {"version": 7}, "version 7"),
        (f"/v1/sessions/{uuid.uuid4().hex}/notes/baker_27/rollback", {"version": 1}, "session"),
        (f"/v1/sessions/{sid}/notes/nobody_999/rollback", {"version": 1}, "nobody_999"),
    ]
    for url, body, needle in cases:
        res = client.post(url, json=body)
        assert res.status_code == 404, (url, res.text)
        assert needle in res.json()["detail"]
    # an entry this session never wrote a note about has no version 1
    res = client.post(f"/v1/sessions/{sid}/notes/{_other_entry_key(game_session)}/rollback",
                      json={"version": 1})
    assert res.status_code == 404 and "no note" in res.json()["detail"]
    assert _note(sid, baker.id).version == 1


def _other_entry_key(game: dict) -> str:
    with session_scope() as s:
        return s.scalar(select(LoreEntry.key).where(LoreEntry.world_id == game["world_id"],
                                                    LoreEntry.key != "baker_27")
                        .order_by(LoreEntry.id).limit(1))


@pytest.mark.parametrize("body", [{}, {"version": -1}, {"version": "1"}, {"version": 1.5},
                                  {"version": 1, "force": True}])
def test_rollback_invalid_body_is_422(client, game_session, body):
    res = client.post(f"/v1/sessions/{game_session['id']}/notes/baker_27/rollback", json=body)
    assert res.status_code == 422, res.text


# --------------------------------------------------------------------------- entries


def test_entry_returns_composite_document_and_revisions(client, game_session):
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    _write_history(sid, baker.id, [A, B])

    res = client.get(f"/v1/sessions/{sid}/entries/baker_27")
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["lore_entry"]["key"] == "baker_27" and body["lore_entry"]["title"] == baker.title
    assert body["lore_entry"]["content"] == baker.content
    assert body["note"] == {"content": B, "version": 2}
    doc = body["composite_document"]
    assert doc.startswith(f"[Base Lore]\n{baker.title}\n{baker.content}")
    assert doc.endswith(f"[Session-Specific Notes]\n{B}")
    revs = body["revisions"]
    assert [r["version"] for r in revs] == [1, 2]
    assert (revs[0]["previous_content"], revs[0]["content"], revs[0]["event_summary"]) == ("", A, A)
    assert (revs[1]["previous_content"], revs[1]["content"], revs[1]["cause"]) == (A, B, "turn")
    assert all(r["created_at"] for r in revs)

    # an entry without a note in this session: base lore only
    other = client.get(f"/v1/sessions/{sid}/entries/{_other_entry_key(game_session)}").json()
    assert other["note"] == {"content": "", "version": 0} and other["revisions"] == []
    assert "[Session-Specific Notes]" not in other["composite_document"]


def test_entry_unknown_is_404(client, game_session):
    res = client.get(f"/v1/sessions/{game_session['id']}/entries/nobody_999")
    assert res.status_code == 404 and "nobody_999" in res.json()["detail"]
    res = client.get(f"/v1/sessions/{uuid.uuid4().hex}/entries/baker_27")
    assert res.status_code == 404 and "session" in res.json()["detail"]


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_list_inspect_and_replay(client, worker, celery_app, wait_for):
    task_id = celery_app.send_task("npc_memory.update_note", kwargs={"bad": 1}).id

    def dead(tid):
        with session_scope() as s:
            return s.scalar(select(DeadLetter.id).where(DeadLetter.task_id == tid))

    dl_id = wait_for(lambda: dead(task_id), timeout=60)

    listed = client.get("/v1/dead-letters", params={"task_name": "npc_memory.update_note"})
    assert listed.status_code == 200, listed.text
    rows = listed.json()
    assert dl_id in [d["id"] for d in rows]
    assert all(d["task_name"] == "npc_memory.update_note" for d in rows)
    assert [d["id"] for d in rows] == sorted((d["id"] for d in rows), reverse=True)
    assert client.get("/v1/dead-letters", params={"task_name": "npc_memory.embed_nothing"}).json() == []
    assert len(client.get("/v1/dead-letters", params={"limit": 1}).json()) == 1

    one = client.get(f"/v1/dead-letters/{dl_id}")
    assert one.status_code == 200
    d = one.json()
    assert (d["task_id"], d["queue"], d["payload"]) == (task_id, "note_update", {"bad": 1})
    assert "invalid payload" in d["error"] and d["replayed_at"] is None

    replay = client.post(f"/v1/dead-letters/{dl_id}/replay")
    assert replay.status_code == 200, replay.text
    r = replay.json()
    assert r["dead_letter_id"] == dl_id and r["replayed_task_id"] == task_id
    assert r["task_id"] and r["task_id"] != task_id and r["replayed_at"]
    assert client.get(f"/v1/dead-letters/{dl_id}").json()["replayed_at"]
    # the replayed task really went through the broker: still invalid, dead-lettered again
    again = wait_for(lambda: dead(r["task_id"]), timeout=60)
    assert client.get(f"/v1/dead-letters/{again}").json()["payload"] == {"bad": 1}
    not_replayed = client.get("/v1/dead-letters", params={"replayed": "false", "limit": 100}).json()
    assert again in [x["id"] for x in not_replayed] and dl_id not in [x["id"] for x in not_replayed]


def test_replayed_archive_turn_lands_once(client, worker, game_session, wait_for):
    baker = _entry(game_session["world_id"], "baker_27")
    turn = _turn_payload(game_session, baker.id)
    with session_scope() as s:
        dl = DeadLetter(task_id=uuid.uuid4().hex, task_name="npc_memory.archive_turn",
                        queue="archive", payload=turn, error="OperationalError: database down")
        s.add(dl)
        s.flush()
        dl_id = dl.id

    first = client.post(f"/v1/dead-letters/{dl_id}/replay")
    second = client.post(f"/v1/dead-letters/{dl_id}/replay")
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    ids = [first.json()["task_id"], second.json()["task_id"]]
    assert ids[0] != ids[1]
    wait_for(lambda: all(_status(t) == "succeeded" for t in ids), timeout=60)
    assert _archived(turn["turn_id"]) == 1
    with session_scope() as s:
        assert s.scalar(select(Turn.player_text).where(Turn.id == turn["turn_id"])) == turn["player_text"]


def test_dead_letter_unknown_is_404(client):
    assert client.get("/v1/dead-letters/987654321").status_code == 404
    res = client.post("/v1/dead-letters/987654321/replay")
    assert res.status_code == 404 and "987654321" in res.json()["detail"]
    assert client.get("/v1/dead-letters/abc").status_code == 422
    assert client.get("/v1/dead-letters", params={"limit": 0}).status_code == 422


# --------------------------------------------------------------------------- task ledger


def _ledger_row(session_id: str | None, status: str, started_at: datetime, *,
                task_name: str = "npc_memory.update_note", payload: dict | None = None,
                queue: str = "note_update") -> str:
    tid = uuid.uuid4().hex
    with session_scope() as s:
        s.add(TaskRecord(task_id=tid, task_name=task_name, queue=queue, session_id=session_id,
                         target="note:baker_27", payload=payload or {}, status=status, attempts=1,
                         error="boom" if status in ("failed", "dead") else None,
                         tokens_used=12, started_at=started_at,
                         finished_at=None if status in ("running", "retrying") else started_at))
    return tid


def test_session_tasks_newest_first_and_filtered(client, game_session):
    sid = game_session["id"]
    t0 = datetime.now(timezone.utc) - timedelta(hours=1)
    old = _ledger_row(sid, "succeeded", t0)
    mid = _ledger_row(sid, "dead", t0 + timedelta(minutes=1))
    new = _ledger_row(sid, "running", t0 + timedelta(minutes=2))
    _ledger_row(uuid.uuid4().hex, "succeeded", t0)  # another session's task

    res = client.get(f"/v1/sessions/{sid}/tasks")
    assert res.status_code == 200, res.text
    rows = res.json()
    assert [r["task_id"] for r in rows] == [new, mid, old]
    r = rows[1]
    assert (r["status"], r["error"], r["queue"], r["target"]) == ("dead", "boom", "note_update",
                                                                  "note:baker_27")
    assert (r["task_name"], r["attempts"], r["tokens_used"]) == ("npc_memory.update_note", 1, 12)
    assert r["started_at"] and r["finished_at"]
    assert rows[0]["finished_at"] is None

    only = client.get(f"/v1/sessions/{sid}/tasks", params={"status": "dead"}).json()
    assert [x["task_id"] for x in only] == [mid]
    assert [x["task_id"] for x in client.get(f"/v1/sessions/{sid}/tasks",
                                             params={"limit": 2}).json()] == [new, mid]
    assert client.get(f"/v1/sessions/{sid}/tasks", params={"status": "bogus"}).status_code == 422
    assert client.get(f"/v1/sessions/{uuid.uuid4().hex}/tasks").status_code == 404


def test_retry_task(client, worker, game_session, wait_for):
    assert client.post(f"/v1/tasks/{uuid.uuid4().hex}/retry").status_code == 404

    baker = _entry(game_session["world_id"], "baker_27")
    turn = _turn_payload(game_session, baker.id)
    now = datetime.now(timezone.utc)
    busy = _ledger_row(game_session["id"], "retrying", now, task_name="npc_memory.archive_turn",
                       queue="archive", payload=turn)
    res = client.post(f"/v1/tasks/{busy}/retry")
    assert res.status_code == 409 and "retrying" in res.json()["detail"]

    failed = _ledger_row(game_session["id"], "failed", now, task_name="npc_memory.archive_turn",
                         queue="archive", payload=turn)
    ids = []
    for _ in range(2):
        res = client.post(f"/v1/tasks/{failed}/retry")
        assert res.status_code == 200, res.text
        out = res.json()
        assert (out["retry_of"], out["task_name"], out["queue"], out["previous_status"]) == (
            failed, "npc_memory.archive_turn", "archive", "failed")
        ids.append(out["task_id"])
    forced = client.post(f"/v1/tasks/{busy}/retry", params={"force": "true"})
    assert forced.status_code == 200, forced.text
    ids.append(forced.json()["task_id"])
    assert len(set(ids)) == 3 and failed not in ids
    wait_for(lambda: all(_status(t) == "succeeded" for t in ids), timeout=60)
    assert _archived(turn["turn_id"]) == 1


# --------------------------------------------------------------------------- queues


def test_queues_reports_every_queue_and_the_running_worker(client, worker, wait_for):
    def answered():
        res = client.get("/v1/queues")
        assert res.status_code == 200, res.text
        body = res.json()
        return body if body["workers"] else None

    body = wait_for(answered, timeout=30, interval=1.0)
    assert set(body["queues"]) == {q.value for q in Queues}
    assert all(isinstance(n, int) and n >= 0 for n in body["queues"].values())
    assert body["errors"] == []
    assert any(set(w["queues"]) >= {q.value for q in Queues} for w in body["workers"].values())


def test_queue_status_counts_waiting_messages_and_never_raises():
    r = nearline.get_redis()
    name = f"ops-test-{uuid.uuid4().hex}"
    try:
        r.rpush(name, "a", "b")
        r.rpush(f"{name}\x06\x169", "c")  # kombu's list for priority 9
        assert queues.queue_lengths(r, [name, f"{name}-empty"]) == {name: 3, f"{name}-empty": 0}
    finally:
        r.delete(name, f"{name}\x06\x169")

    def no_answer():
        return None

    def broken():
        raise ConnectionError("broker gone")

    quiet = queues.queue_status(r, no_answer)
    assert quiet["workers"] == {} and quiet["errors"] == []
    assert set(quiet["queues"]) == {q.value for q in Queues}
    down = queues.queue_status(None, broken)
    assert down["workers"] == {} and all(v is None for v in down["queues"].values())
    assert len(down["errors"]) == 2 and "broker gone" in down["errors"][1]


def test_ops_routes_in_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/sessions/{session_id}/notes/{lore_entry_key}/rollback"]
    assert "get" in paths["/v1/sessions/{session_id}/entries/{lore_entry_key}"]
    assert "get" in paths["/v1/dead-letters"]
    assert "get" in paths["/v1/dead-letters/{dead_letter_id}"]
    assert "post" in paths["/v1/dead-letters/{dead_letter_id}/replay"]
    assert "get" in paths["/v1/sessions/{session_id}/tasks"]
    assert "post" in paths["/v1/tasks/{task_id}/retry"]
    assert "get" in paths["/v1/queues"]


# --------------------------------------------------------------------------- CLI


def test_cli_rollback_show_entry_and_dead_letters(worker, game_session, wait_for):
    import json

    from workers.cli import cli

    runner = CliRunner()
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    _write_history(sid, baker.id, [A, B])

    res = runner.invoke(cli, ["rollback-note", sid, "baker_27", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["status"], out["version"], out["content"]) == ("written", 3, A)
    assert out["embed_task_id"]
    assert nearline.get_note(nearline.get_redis(), sid, baker.id) == A
    wait_for(lambda: _status(out["embed_task_id"]) == "succeeded", timeout=60)

    res = runner.invoke(cli, ["rollback-note", sid, "baker_27", "9"])
    assert res.exit_code == 1 and "version 9" in res.output

    shown = json.loads(runner.invoke(cli, ["show-entry", sid, "baker_27"]).stdout)
    assert shown["note"] == {"content": A, "version": 3}
    assert [r["cause"] for r in shown["revisions"]] == ["turn", "turn", "rollback"]

    with session_scope() as s:
        dl = DeadLetter(task_id=uuid.uuid4().hex, task_name="npc_memory.archive_turn",
                        queue="archive", payload=_turn_payload(game_session, baker.id), error="x")
        s.add(dl)
        s.flush()
        dl_id = dl.id
    res = runner.invoke(cli, ["dead-letters", "--show", str(dl_id)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["payload"]["session_id"] == sid
    res = runner.invoke(cli, ["dead-letters", "--task-name", "npc_memory.archive_turn", "--limit", "500"])
    assert res.exit_code == 0 and dl_id in [json.loads(line)["id"] for line in res.stdout.splitlines()]
    res = runner.invoke(cli, ["replay-dead-letter", str(dl_id)])
    assert res.exit_code == 0, res.output
    wait_for(lambda: _status(json.loads(res.stdout)["task_id"]) == "succeeded", timeout=60)
    assert runner.invoke(cli, ["replay-dead-letter", "987654321"]).exit_code == 1

    tasks = runner.invoke(cli, ["session-tasks", sid, "--status", "succeeded"])
    assert tasks.exit_code == 0 and tasks.stdout.strip()
    assert runner.invoke(cli, ["retry-task", uuid.uuid4().hex]).exit_code == 1
