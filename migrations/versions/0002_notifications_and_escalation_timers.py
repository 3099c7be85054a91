"""notification ledger and escalation timers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 18:42:09.012677+00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('escalation_timers',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('severity', sa.String(length=4), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fired', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_escalation_timers_incident_id_incidents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_escalation_timers')),
    sa.UniqueConstraint('incident_id', name=op.f('uq_escalation_timers_incident_id'))
    )
    op.create_index('ix_escalation_timers_due', 'escalation_timers', ['due_at'], unique=False, postgresql_where=sa.text('active'))
    op.create_table('notifications',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('target', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('priority', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.Text(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending','sending','sent','failed')", name=op.f('ck_notifications_status')),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_notifications_incident_id_incidents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('incident_id', 'channel', 'action', 'step', name=op.f('uq_notifications_incident_id_channel_action_step'))
    )
    op.create_index('ix_notifications_pending', 'notifications', ['status', 'created_at'], unique=False, postgresql_where=sa.text("status IN ('pending','sending')"))


def downgrade() -> None:
    op.drop_index('ix_notifications_pending', table_name='notifications', postgresql_where=sa.text("status IN ('pending','sending')"))
    op.drop_table('notifications')
    op.drop_index('ix_escalation_timers_due', table_name='escalation_timers', postgresql_where=sa.text('active'))
    op.drop_table('escalation_timers')
