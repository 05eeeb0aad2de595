"""Metric blocks: per-key min/max/count over fixed step ranges, for fast downsampled reads.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 14:43:52.075199
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('metric_blocks',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('block', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('min_step', sa.BigInteger(), nullable=False),
    sa.Column('max_step', sa.BigInteger(), nullable=False),
    sa.Column('vmin', sa.Float(), nullable=False),
    sa.Column('vmax', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'key', 'level', 'block')
    )


def downgrade() -> None:
    op.drop_table('metric_blocks')
