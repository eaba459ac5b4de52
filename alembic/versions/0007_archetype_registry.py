"""archetype adapter registry: archetypes (one model server each) and their LoRA adapters

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 18:50:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'archetypes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('server_url', sa.String(length=500), nullable=False),
        sa.Column('server_id', sa.String(length=200), nullable=False),
        sa.Column('base_model', sa.String(length=500), nullable=False),
        sa.Column('voice_service_url', sa.String(length=500), nullable=True),
        sa.Column('facial_service_url', sa.String(length=500), nullable=True),
        sa.Column('body_service_url', sa.String(length=500), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_archetypes')),
        sa.UniqueConstraint('name', name=op.f('uq_archetypes_name')),
    )
    op.create_table(
        'adapters',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('archetype_id', sa.Integer(), nullable=False),
        sa.Column('task', sa.String(length=50), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('path', sa.String(length=1000), nullable=False),
        sa.Column('rank', sa.Integer(), nullable=False),
        sa.Column('size_mb', sa.Float(), nullable=False),
        sa.Column('base_model', sa.String(length=500), nullable=False),
        sa.Column('version', sa.String(length=100), nullable=False),
        sa.Column('trained_on', sa.Text(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('mistral_model', sa.String(length=300), nullable=True),
        sa.Column('broken', sa.Boolean(), nullable=False),
        sa.Column('broken_reason', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['archetype_id'], ['archetypes.id'],
                                name=op.f('fk_adapters_archetype_id_archetypes'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
        sa.UniqueConstraint('archetype_id', 'task', name='uq_adapters_archetype_task'),
        sa.UniqueConstraint('name', name=op.f('uq_adapters_name')),
    )
    op.create_index(op.f('ix_adapters_archetype_id'), 'adapters', ['archetype_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_adapters_archetype_id'), table_name='adapters')
    op.drop_table('adapters')
    op.drop_table('archetypes')
