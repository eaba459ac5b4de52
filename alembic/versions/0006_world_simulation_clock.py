"""world simulation: per-world tick settings, in-game clock on sessions and revisions; task
ids up to 200 characters (derived ids such as ``npc_memory.simulate_world:{tick}:{session}``)

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-21 16:10:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('worlds') as batch:
        batch.add_column(sa.Column('simulate_every_turns', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('tick_game_minutes', sa.Integer(), nullable=True))
    with op.batch_alter_table('game_sessions') as batch:
        batch.add_column(sa.Column('game_minutes', sa.Integer(), nullable=False,
                                   server_default='0'))
    with op.batch_alter_table('session_note_revisions') as batch:
        batch.add_column(sa.Column('game_minutes', sa.Integer(), nullable=True))
        batch.alter_column('task_id', type_=sa.String(200), existing_type=sa.String(64))
    for table in ('task_records', 'dead_letters'):
        with op.batch_alter_table(table) as batch:
            batch.alter_column('task_id', type_=sa.String(200), existing_type=sa.String(64))


def downgrade() -> None:
    """Downgrade schema."""
    for table in ('task_records', 'dead_letters'):
        with op.batch_alter_table(table) as batch:
            batch.alter_column('task_id', type_=sa.String(64), existing_type=sa.String(200))
    with op.batch_alter_table('session_note_revisions') as batch:
        batch.alter_column('task_id', type_=sa.String(64), existing_type=sa.String(200))
        batch.drop_column('game_minutes')
    with op.batch_alter_table('game_sessions') as batch:
        batch.drop_column('game_minutes')
    with op.batch_alter_table('worlds') as batch:
        batch.drop_column('tick_game_minutes')
        batch.drop_column('simulate_every_turns')
