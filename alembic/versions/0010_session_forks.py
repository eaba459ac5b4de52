"""session forks: save slots (fork and roll back a session at a turn)

``game_sessions`` gains ``epoch`` (bumped by every rollback: the fence tasks check),
``forked_from_session_id`` and ``forked_at_turn_id`` (where a forked session came from);
``turns`` gains ``rolled_back_at`` and ``lore_entries`` ``retracted_at`` (undone by a
rollback: kept in history, out of evidence and retrieval); ``session_rollbacks`` records
each rollback (turn kept, epoch after it, turn ids undone, counts).

Revision ID: 0010_session_forks
Revises: 0009_evidence
Create Date: 2026-12-02 02:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0010_session_forks'
down_revision: Union[str, Sequence[str], None] = '0009_evidence'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('game_sessions') as batch:
        batch.add_column(sa.Column('epoch', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('forked_from_session_id', sa.String(64), nullable=True))
        batch.add_column(sa.Column('forked_at_turn_id', sa.String(64), nullable=True))
    with op.batch_alter_table('turns') as batch:
        batch.add_column(sa.Column('rolled_back_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('lore_entries') as batch:
        batch.add_column(sa.Column('retracted_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'session_rollbacks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('session_id', sa.String(64), nullable=False),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('to_turn_id', sa.String(64), nullable=False),
        sa.Column('to_seq', sa.Integer(), nullable=False),
        sa.Column('turn_ids', sa.JSON(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['session_id'], ['game_sessions.id'], ondelete='CASCADE',
                                name='fk_session_rollbacks_session_id_game_sessions'),
        sa.PrimaryKeyConstraint('id', name='pk_session_rollbacks'),
    )
    op.create_index('ix_session_rollbacks_session_id', 'session_rollbacks', ['session_id'],
                    unique=False)


def downgrade() -> None:
    """Downgrade schema: drop the rollback log and the save-slot columns."""
    op.drop_index('ix_session_rollbacks_session_id', table_name='session_rollbacks')
    op.drop_table('session_rollbacks')
    with op.batch_alter_table('lore_entries') as batch:
        batch.drop_column('retracted_at')
    with op.batch_alter_table('turns') as batch:
        batch.drop_column('rolled_back_at')
    with op.batch_alter_table('game_sessions') as batch:
        batch.drop_column('forked_at_turn_id')
        batch.drop_column('forked_from_session_id')
        batch.drop_column('epoch')
