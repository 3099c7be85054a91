"""incidents, alerts, timeline

Revision ID: 0001
Revises:
Create Date: 2026-11-22 17:49:00.720783+00:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alert_groups',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('group_hash', sa.String(length=64), nullable=False),
    sa.Column('receiver', sa.Text(), nullable=False),
    sa.Column('group_key', sa.Text(), nullable=False),
    sa.Column('revision', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('last_digest', sa.String(length=64), nullable=True),
    sa.Column('incident_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_groups')),
    sa.UniqueConstraint('group_hash', name=op.f('uq_alert_groups_group_hash'))
    )
    op.create_table('incidents',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('key', sa.String(length=80), nullable=False),
    sa.Column('group_id', sa.BigInteger(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.Column('severity', sa.String(length=4), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('labels', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('group_labels', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('receiver', sa.Text(), nullable=False),
    sa.Column('external_url', sa.Text(), nullable=False),
    sa.Column('flapping', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("severity IN ('SEV1','SEV2','SEV3','SEV4')", name=op.f('ck_incidents_severity')),
    sa.CheckConstraint("status IN ('triggered','acknowledged','resolved')", name=op.f('ck_incidents_status')),
    sa.ForeignKeyConstraint(['group_id'], ['alert_groups.id'], name=op.f('fk_incidents_group_id_alert_groups')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incidents')),
    sa.UniqueConstraint('key', name=op.f('uq_incidents_key'))
    )
    op.create_index('ix_incidents_group_id_id', 'incidents', ['group_id', 'id'], unique=False)
    op.create_index('ix_incidents_resolved_at', 'incidents', ['resolved_at'], unique=False)
    op.create_index('ix_incidents_severity_id', 'incidents', ['severity', 'id'], unique=False)
    op.create_index('ix_incidents_status_id', 'incidents', ['status', 'id'], unique=False)
    op.create_index('uq_incidents_open_group', 'incidents', ['group_id'], unique=True, postgresql_where=sa.text("status <> 'resolved'"))
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('fingerprint', sa.String(length=256), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('severity', sa.String(length=4), nullable=False),
    sa.Column('labels', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('annotations', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('generator_url', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_alerts_incident_id_incidents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('incident_id', 'fingerprint', name=op.f('uq_alerts_incident_id_fingerprint'))
    )
    op.create_table('timeline_entries',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_timeline_entries_incident_id_incidents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_timeline_entries'))
    )
    op.create_index('ix_timeline_entries_incident_id_at', 'timeline_entries', ['incident_id', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_timeline_entries_incident_id_at', table_name='timeline_entries')
    op.drop_table('timeline_entries')
    op.drop_table('alerts')
    op.drop_index('uq_incidents_open_group', table_name='incidents', postgresql_where=sa.text("status <> 'resolved'"))
    op.drop_index('ix_incidents_status_id', table_name='incidents')
    op.drop_index('ix_incidents_severity_id', table_name='incidents')
    op.drop_index('ix_incidents_resolved_at', table_name='incidents')
    op.drop_index('ix_incidents_group_id_id', table_name='incidents')
    op.drop_table('incidents')
    op.drop_table('alert_groups')
