"""remediation runs: one row per remediation started by an incident opening

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 20:07:34.129337+00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('remediation_runs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('breaker_key', sa.Text(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('output', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wake_by_poll', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending','running','succeeded','failed','skipped_circuit_open','cancelled')", name=op.f('ck_remediation_runs_status')),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_remediation_runs_incident_id_incidents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_remediation_runs')),
    sa.UniqueConstraint('incident_id', 'name', 'step', name=op.f('uq_remediation_runs_incident_id_name_step'))
    )
    op.create_index('ix_remediation_runs_status_next_attempt_at', 'remediation_runs', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_remediation_runs_status_next_attempt_at', table_name='remediation_runs')
    op.drop_table('remediation_runs')
