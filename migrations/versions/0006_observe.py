"""Observe runs: the current phase of a running run (`runs.phase`: label, done/total units, measured rate
and ETA), written by the worker's reporter with its progress.

Revision ID: 0006_observe
Revises: 0005
Create Date: 2026-12-02 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_observe'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('phase', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('phase')
