"""Sweeps: a hyper-parameter search (`sweeps`) and its trials (`sweep_trials`), each trial an ordinary
run; UNIQUE(sweep_id, number) so no trial is ever created twice.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('preset', sa.String(length=200), nullable=True),
    sa.Column('base_spec', sa.JSON(), nullable=False),
    sa.Column('space', sa.JSON(), nullable=False),
    sa.Column('method', sa.String(length=20), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('budget', sa.Integer(), nullable=False),
    sa.Column('parallel', sa.Integer(), nullable=False),
    sa.Column('objective', sa.JSON(), nullable=False),
    sa.Column('direction', sa.String(length=10), nullable=False),
    sa.Column('pruner', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('best_number', sa.Integer(), nullable=True),
    sa.Column('best_value', sa.Float(), nullable=True),
    sa.Column('controller', sa.String(length=64), nullable=True),
    sa.Column('controller_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_sweeps_state', 'sweeps', ['state'], unique=False)
    op.create_index('ix_sweeps_created_at', 'sweeps', ['created_at'], unique=False)
    op.create_table('sweep_trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('system_attrs', sa.JSON(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('eval_run_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['eval_run_id'], ['runs.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sweep_id', 'number', name='uq_sweep_trials_sweep_number')
    )
    op.create_index('ix_sweep_trials_sweep_id', 'sweep_trials', ['sweep_id'], unique=False)
    op.create_index('ix_sweep_trials_run_id', 'sweep_trials', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_sweep_trials_run_id', table_name='sweep_trials')
    op.drop_index('ix_sweep_trials_sweep_id', table_name='sweep_trials')
    op.drop_table('sweep_trials')
    op.drop_index('ix_sweeps_created_at', table_name='sweeps')
    op.drop_index('ix_sweeps_state', table_name='sweeps')
    op.drop_table('sweeps')
