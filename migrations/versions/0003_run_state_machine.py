"""The run state machine: the owning attempt on each run (fencing), attempt numbers, run events; token
expiry and server-side dashboard sessions; worker liveness.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('attempt_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('attempt_count', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('attempts') as batch:
        batch.add_column(sa.Column('number', sa.Integer(), nullable=False, server_default='1'))
    # runs started before this revision: their attempts numbered in order, the newest unfinished one owns
    op.execute(
        "UPDATE attempts SET number = (SELECT COUNT(*) FROM attempts a2 "
        "WHERE a2.run_id = attempts.run_id AND a2.id <= attempts.id)"
    )
    op.execute("UPDATE runs SET attempt_count = (SELECT COUNT(*) FROM attempts WHERE attempts.run_id = runs.id)")
    op.execute(
        "UPDATE runs SET attempt_id = (SELECT MAX(id) FROM attempts WHERE attempts.run_id = runs.id "
        "AND attempts.ended_at IS NULL) WHERE state = 'running'"
    )
    op.create_table('run_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('transition', sa.String(length=20), nullable=False),
    sa.Column('from_state', sa.String(length=20), nullable=True),
    sa.Column('to_state', sa.String(length=20), nullable=False),
    sa.Column('attempt_id', sa.Integer(), nullable=True),
    sa.Column('cause', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_run_events_run_id_id', 'run_events', ['run_id', 'id'], unique=False)
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('web_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['token_id'], ['api_tokens.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('secret_hash')
    )
    op.create_index('ix_web_sessions_token_id', 'web_sessions', ['token_id'], unique=False)
    op.create_table('workers',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('queues', sa.String(length=100), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('workers')
    op.drop_index('ix_web_sessions_token_id', table_name='web_sessions')
    op.drop_table('web_sessions')
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('expires_at')
    op.drop_index('ix_run_events_run_id_id', table_name='run_events')
    op.drop_table('run_events')
    with op.batch_alter_table('attempts') as batch:
        batch.drop_column('number')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('attempt_count')
        batch.drop_column('attempt_id')
