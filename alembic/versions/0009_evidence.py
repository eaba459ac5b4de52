"""evidence: the turn archive keeps speaker, event id and in-game time; evidence vectors

The archive (``turns``) gains ``speaker`` (who said ``player_text``; NULL: the session's
player), ``event_id`` (the caller's id of a posted event) and ``game_minutes`` (the session's
in-game clock at the turn; NULL for turns archived before this revision). Before this
revision a speaker other than the player was kept as a ``"{speaker}: "`` prefix of
``player_text``; such rows are left as they are (the prefix cannot be told apart from text
that merely contains a colon).

``evidence_vectors`` holds one embedding per (turn, part, embedder) of the evidence items
``"Speaker: text"`` (part 0: what was said to the NPC, part 1: the reply).

Revision ID: 0009_evidence
Revises: 0008
Create Date: 2026-12-01 06:10:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0009_evidence'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('turns') as batch:
        batch.add_column(sa.Column('speaker', sa.String(200), nullable=True))
        batch.add_column(sa.Column('event_id', sa.String(200), nullable=True))
        batch.add_column(sa.Column('game_minutes', sa.Integer(), nullable=True))
    op.create_table(
        'evidence_vectors',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('turn_id', sa.String(64), nullable=False),
        sa.Column('part', sa.Integer(), nullable=False),
        sa.Column('session_id', sa.String(64), nullable=False),
        sa.Column('item_id', sa.Integer(), nullable=False),
        sa.Column('embedder', sa.String(100), nullable=False),
        sa.Column('dim', sa.Integer(), nullable=False),
        sa.Column('vector', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['turn_id'], ['turns.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['session_id'], ['game_sessions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('turn_id', 'part', 'embedder',
                            name='uq_evidence_vectors_turn_part_embedder'),
    )
    op.create_index('ix_evidence_vectors_embedder_session', 'evidence_vectors',
                    ['embedder', 'session_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema: drop the evidence vectors and the three archive columns."""
    op.drop_index('ix_evidence_vectors_embedder_session', table_name='evidence_vectors')
    op.drop_table('evidence_vectors')
    with op.batch_alter_table('turns') as batch:
        batch.drop_column('game_minutes')
        batch.drop_column('event_id')
        batch.drop_column('speaker')
