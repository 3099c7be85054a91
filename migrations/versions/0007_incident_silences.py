"""Incident silences: the Alertmanager silences made for each incident.

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('incident_silences',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('silence_id', sa.String(length=64), nullable=True),
    sa.Column('reference', sa.String(length=120), nullable=False),
    sa.Column('matchers', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_incident_silences_incident_id_incidents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incident_silences')),
    sa.UniqueConstraint('reference', name=op.f('uq_incident_silences_reference')),
    sa.UniqueConstraint('silence_id', name=op.f('uq_incident_silences_silence_id'))
    )
    op.create_index('ix_incident_silences_incident_id_id', 'incident_silences', ['incident_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_incident_silences_incident_id_id', table_name='incident_silences')
    op.drop_table('incident_silences')
