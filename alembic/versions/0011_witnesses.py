"""witnesses: who witnessed each archived turn; turns addressed to no NPC

The archive (``turns``) gains ``kind`` (speech, narration, game, npc_exchange, told; NULL:
speech), ``witnesses`` (JSON list of the lore entry ids of the characters who witnessed the
turn; NULL for turns archived before this revision, which count as witnessed by their
addressed NPC alone) and ``source`` (provenance of a turn the system made, e.g. the world
simulation passing on what an NPC knows). ``npc_entry_id`` becomes nullable: a narration or
game event may be addressed to no NPC. The downgrade deletes such turns (the old schema
cannot hold them) before making the column NOT NULL again.

Revision ID: 0011_witnesses
Revises: 0010_session_forks
Create Date: 2026-12-02 02:20:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0011_witnesses'
down_revision: Union[str, Sequence[str], None] = '0010_session_forks'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('turns') as batch:
        batch.add_column(sa.Column('kind', sa.String(20), nullable=True))
        batch.add_column(sa.Column('witnesses', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('source', sa.String(300), nullable=True))
        batch.alter_column('npc_entry_id', existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    """Downgrade schema: drop the three columns; turns addressed to no NPC are deleted."""
    op.execute("DELETE FROM turns WHERE npc_entry_id IS NULL")
    with op.batch_alter_table('turns') as batch:
        batch.alter_column('npc_entry_id', existing_type=sa.Integer(), nullable=False)
        batch.drop_column('source')
        batch.drop_column('witnesses')
        batch.drop_column('kind')
