"""stored vectors per embedder: unique key (scope, lore entry, embedder) replaces the
``{scope}@{embedder}`` stored scopes; index (embedder, scope)

Before this revision the unique key was (scope, lore entry), so the vectors of an embedder
other than the default MiniLM were stored under the scope ``{scope}@{embedder}`` (the
``embedder`` column already held the name). Upgrade turns those scopes back into the plain
``world:{id}`` / ``session:{id}`` names. Where a plain-scope row of the same (scope, lore
entry, embedder) already existed (vectors written by a non-default ``EMBEDDER`` before the
suffixed scopes were introduced), the newer row (``updated_at``, then ``id``) is kept and the
other deleted, as the old loader let the newer one win.

Downgrade re-suffixes every row of an embedder other than ``all-MiniLM-L6-v2`` and restores
the old key; it fails (ValueError, nothing changed) if a suffixed scope would be longer than
the column's 100 characters, as the old code refused to write such rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21 19:10:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The embedder whose rows kept the plain scope before this revision (the old
# memory.vector_index.DEFAULT_EMBEDDER), fixed here so later code changes cannot alter history.
DEFAULT_EMBEDDER = 'all-MiniLM-L6-v2'
SCOPE_LENGTH = 100

vectors = sa.table(
    'stored_vectors',
    sa.column('id', sa.Integer()),
    sa.column('scope', sa.String(SCOPE_LENGTH)),
    sa.column('lore_entry_id', sa.Integer()),
    sa.column('embedder', sa.String(100)),
    sa.column('updated_at', sa.DateTime(timezone=True)),
)


def _plain_scopes(conn) -> None:
    """Strip ``@{embedder}`` from every stored scope, keeping the newest row of each
    (scope, lore entry, embedder)."""
    suffixed = conn.execute(sa.select(vectors.c.id, vectors.c.scope, vectors.c.lore_entry_id,
                                      vectors.c.embedder, vectors.c.updated_at)
                            .where(vectors.c.scope.contains('@'))).all()
    if not suffixed:
        return
    embedders = sorted({row.embedder for row in suffixed})
    plain = conn.execute(sa.select(vectors.c.id, vectors.c.scope, vectors.c.lore_entry_id,
                                   vectors.c.embedder, vectors.c.updated_at)
                         .where(~vectors.c.scope.contains('@'),
                                vectors.c.embedder.in_(embedders))).all()
    groups: dict[tuple, list] = {}
    for row in list(plain) + list(suffixed):
        key = (row.scope.split('@', 1)[0], row.lore_entry_id, row.embedder)
        groups.setdefault(key, []).append(row)
    drop: list[int] = []
    rename: list[dict] = []
    for (scope, _, _), rows in groups.items():
        rows.sort(key=lambda r: (r.updated_at, r.id))
        keep, older = rows[-1], rows[:-1]
        drop += [r.id for r in older]
        if keep.scope != scope:
            rename.append({'row_id': keep.id, 'plain': scope})
    if drop:
        conn.execute(vectors.delete().where(vectors.c.id.in_(drop)))
    if rename:
        conn.execute(vectors.update().where(vectors.c.id == sa.bindparam('row_id'))
                     .values(scope=sa.bindparam('plain')), rename)


def _suffixed_scopes(conn) -> list[dict]:
    """The new scope ``{scope}@{embedder}`` of every row of an embedder other than the
    default, as ``{'row_id', 'suffixed'}`` parameters (nothing is written).

    Raises:
        ValueError: such a scope would be longer than the column.
    """
    rows = conn.execute(sa.select(vectors.c.id, vectors.c.scope, vectors.c.embedder)
                        .where(vectors.c.embedder != DEFAULT_EMBEDDER)).all()
    rename = [{'row_id': r.id, 'suffixed': f'{r.scope}@{r.embedder}'} for r in rows]
    too_long = [r['suffixed'] for r in rename if len(r['suffixed']) > SCOPE_LENGTH]
    if too_long:
        raise ValueError(f'cannot downgrade: {len(too_long)} stored scopes would exceed '
                         f'{SCOPE_LENGTH} characters, e.g. {too_long[0]!r}')
    return rename


def upgrade() -> None:
    """Upgrade schema: drop the old key (plain and suffixed scopes of one entry would collide
    under it), rename the scopes, then add the new key and index."""
    with op.batch_alter_table('stored_vectors') as batch:
        batch.drop_constraint('uq_stored_vectors_scope', type_='unique')
    _plain_scopes(op.get_bind())
    with op.batch_alter_table('stored_vectors') as batch:
        batch.create_unique_constraint('uq_stored_vectors_scope_entry_embedder',
                                       ['scope', 'lore_entry_id', 'embedder'])
        batch.create_index('ix_stored_vectors_embedder_scope', ['embedder', 'scope'],
                           unique=False)


def downgrade() -> None:
    """Downgrade schema: drop the new key and index, re-suffix the scopes, restore the old
    key."""
    rename = _suffixed_scopes(op.get_bind())  # raises before anything is changed
    with op.batch_alter_table('stored_vectors') as batch:
        batch.drop_index('ix_stored_vectors_embedder_scope')
        batch.drop_constraint('uq_stored_vectors_scope_entry_embedder', type_='unique')
    if rename:
        op.get_bind().execute(vectors.update().where(vectors.c.id == sa.bindparam('row_id'))
                              .values(scope=sa.bindparam('suffixed')), rename)
    with op.batch_alter_table('stored_vectors') as batch:
        batch.create_unique_constraint('uq_stored_vectors_scope', ['scope', 'lore_entry_id'])
