"""Migration 0008 (stored vectors per embedder) on a database holding rows of the old
``{scope}@{embedder}`` layout, on SQLite and PostgreSQL (``blank_database``): upgrade gives
every row its plain scope under the key (scope, lore entry, embedder), downgrade restores the
suffixed scopes. And the head schema the migrations build matches the models."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from alembic import command
from sqlalchemy import create_engine, insert, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from memory.db import alembic_config, migrate, normalise_url
from memory.vector_index import DEFAULT_EMBEDDER, VectorIndex, load_from_db
from models import LoreEntry, StoredVector, World

MISTRAL = "mistral-embed"
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _vector(i: int) -> bytes:
    v = np.zeros(4, np.float32)
    v[i % 4] = 1.0
    return v.tobytes()


def _row(world_id: int, scope: str, entry_id: int, embedder: str, doc: str,
         updated_at: datetime = T0) -> dict:
    return {"world_id": world_id, "scope": scope, "lore_entry_id": entry_id,
            "embedder": embedder, "dim": 4, "vector": _vector(entry_id), "document": doc,
            "content_hash": doc[:64], "note_version": 0, "updated_at": updated_at}


def _rows(engine) -> set[tuple[str, int, str, str]]:
    with engine.connect() as conn:
        return set(conn.execute(select(StoredVector.scope, StoredVector.lore_entry_id,
                                       StoredVector.embedder, StoredVector.document)).all())


@pytest.fixture()
def old_layout(blank_database):
    """A database at revision 0007 holding vectors in the old layout: MiniLM rows under plain
    scopes, ``mistral-embed`` rows under ``{scope}@mistral-embed``, and one ``mistral-embed``
    row under a plain scope (written before the suffixes) with a newer suffixed twin."""
    migrate(blank_database, "0007")
    engine = create_engine(normalise_url(blank_database), poolclass=NullPool)
    with Session(engine) as s, s.begin():
        world = World(key="migration-world", title="Migration world")
        s.add(world)
        s.flush()
        # Core inserts naming their columns: the ORM model has columns of later revisions
        a, b = (s.execute(insert(LoreEntry.__table__).values(
            world_id=world.id, key=k, entity_type="character", title=k.title(),
            content=f"{k} content").returning(LoreEntry.__table__.c.id)).scalar_one()
            for k in ("alice", "bob"))
        wid, ws, ss = world.id, f"world:{world.id}", "session:s1"
        ids = {"world": wid, "a": a, "b": b}
    with engine.begin() as conn:
        conn.execute(insert(StoredVector.__table__), [
            _row(wid, ws, ids["a"], DEFAULT_EMBEDDER, "minilm world a"),
            _row(wid, ss, ids["b"], DEFAULT_EMBEDDER, "minilm session b"),
            _row(wid, f"{ws}@{MISTRAL}", ids["a"], MISTRAL, "mistral world a"),
            _row(wid, f"{ss}@{MISTRAL}", ids["b"], MISTRAL, "mistral session b"),
            _row(wid, ws, ids["b"], MISTRAL, "mistral world b, old plain row"),
            _row(wid, f"{ws}@{MISTRAL}", ids["b"], MISTRAL, "mistral world b, newer",
                 T0 + timedelta(hours=1)),
        ])
    try:
        yield {"url": blank_database, "engine": engine, **ids}
    finally:
        engine.dispose()


def test_upgrade_turns_suffixed_scopes_into_plain_ones(old_layout):
    engine, wid, a, b = (old_layout[k] for k in ("engine", "world", "a", "b"))
    ws, ss = f"world:{wid}", "session:s1"
    migrate(old_layout["url"])

    assert _rows(engine) == {
        (ws, a, DEFAULT_EMBEDDER, "minilm world a"),
        (ss, b, DEFAULT_EMBEDDER, "minilm session b"),
        (ws, a, MISTRAL, "mistral world a"),
        (ss, b, MISTRAL, "mistral session b"),
        (ws, b, MISTRAL, "mistral world b, newer"),  # the newer of the two rows is kept
    }
    insp = inspect(engine)
    uniques = {u["name"]: u["column_names"] for u in insp.get_unique_constraints("stored_vectors")}
    assert uniques == {"uq_stored_vectors_scope_entry_embedder":
                       ["scope", "lore_entry_id", "embedder"]}
    indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("stored_vectors")}
    assert indexes["ix_stored_vectors_embedder_scope"] == ["embedder", "scope"]

    # each embedder's index loads its own vectors under the plain scopes
    with Session(engine) as s:
        index = VectorIndex(4, MISTRAL)
        assert load_from_db(index, s) == 3
        assert index.ids(ws).tolist() == [a, b] and index.ids(ss).tolist() == [b]
        assert load_from_db(VectorIndex(4, DEFAULT_EMBEDDER), s) == 2

    # the new key: a third embedder's row beside the others is fine, a duplicate is not
    with engine.begin() as conn:
        conn.execute(insert(StoredVector.__table__), [_row(wid, ws, a, "third", "third a")])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(StoredVector.__table__), [_row(wid, ws, a, MISTRAL, "dup")])


def test_downgrade_restores_the_suffixed_scopes(old_layout):
    engine, wid, a, b = (old_layout[k] for k in ("engine", "world", "a", "b"))
    ws, ss = f"world:{wid}", "session:s1"
    migrate(old_layout["url"])
    command.downgrade(alembic_config(old_layout["url"]), "0007")

    assert _rows(engine) == {
        (ws, a, DEFAULT_EMBEDDER, "minilm world a"),
        (ss, b, DEFAULT_EMBEDDER, "minilm session b"),
        (f"{ws}@{MISTRAL}", a, MISTRAL, "mistral world a"),
        (f"{ss}@{MISTRAL}", b, MISTRAL, "mistral session b"),
        (f"{ws}@{MISTRAL}", b, MISTRAL, "mistral world b, newer"),
    }
    uniques = {u["name"]: u["column_names"]
               for u in inspect(engine).get_unique_constraints("stored_vectors")}
    assert uniques == {"uq_stored_vectors_scope": ["scope", "lore_entry_id"]}
    # and up again
    migrate(old_layout["url"])
    assert {(scope, embedder) for scope, _, embedder, _ in _rows(engine)} == {
        (ws, DEFAULT_EMBEDDER), (ss, DEFAULT_EMBEDDER), (ws, MISTRAL), (ss, MISTRAL)}


def test_downgrade_refuses_scopes_too_long_for_the_old_layout(old_layout):
    engine, wid, a = (old_layout[k] for k in ("engine", "world", "a"))
    migrate(old_layout["url"])
    long_name = "e" * 100  # "world:N@" + 100 characters do not fit the 100-character column
    with engine.begin() as conn:
        conn.execute(insert(StoredVector.__table__), [_row(wid, f"world:{wid}", a, long_name, "x")])
    before = _rows(engine)
    with pytest.raises(ValueError, match="cannot downgrade"):
        command.downgrade(alembic_config(old_layout["url"]), "0007")
    assert _rows(engine) == before
    names = {u["name"] for u in inspect(engine).get_unique_constraints("stored_vectors")}
    assert names == {"uq_stored_vectors_scope_entry_embedder"}


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
