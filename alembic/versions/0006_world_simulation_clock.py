"""world simulation: per-world tick settings, in-game clock on sessions and revisions

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-21 16:10:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0003'
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


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('session_note_revisions') as batch:
        batch.drop_column('game_minutes')
    with op.batch_alter_table('game_sessions') as batch:
        batch.drop_column('game_minutes')
    with op.batch_alter_table('worlds') as batch:
        batch.drop_column('tick_game_minutes')
        batch.drop_column('simulate_every_turns')
