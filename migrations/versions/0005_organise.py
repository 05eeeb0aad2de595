"""Organise runs: editable tags, a Markdown note, a project, who launched it and an archive flag on
`runs`; the environment each attempt ran in (`attempts.provenance`: versions, host, GPU model).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('tags', sa.JSON(), nullable=False, server_default='[]'))
        batch.add_column(sa.Column('note', sa.Text(), nullable=False, server_default=''))
        batch.add_column(sa.Column('project', sa.String(length=200), nullable=False, server_default=''))
        batch.add_column(sa.Column('launched_by', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True))
        batch.create_index('ix_runs_project', ['project'], unique=False)
    with op.batch_alter_table('attempts') as batch:
        batch.add_column(sa.Column('provenance', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        batch.drop_column('provenance')
    with op.batch_alter_table('runs') as batch:
        batch.drop_index('ix_runs_project')
        batch.drop_column('archived_at')
        batch.drop_column('launched_by')
        batch.drop_column('project')
        batch.drop_column('note')
        batch.drop_column('tags')
