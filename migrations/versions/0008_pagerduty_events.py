"""PagerDuty V3 webhook events already applied, so a redelivery changes nothing
and a transition overtaken by a later one is skipped.

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pagerduty_events',
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('pagerduty_incident_id', sa.String(length=255), nullable=True),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'],
                            name=op.f('fk_pagerduty_events_incident_id_incidents'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_pagerduty_events'))
    )
    op.create_index(op.f('ix_pagerduty_events_incident_id'), 'pagerduty_events',
                    ['incident_id'], unique=False)
    op.create_index(op.f('ix_pagerduty_events_pagerduty_incident_id'), 'pagerduty_events',
                    ['pagerduty_incident_id'], unique=False)
    op.create_index(op.f('ix_pagerduty_events_received_at'), 'pagerduty_events',
                    ['received_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_pagerduty_events_received_at'), table_name='pagerduty_events')
    op.drop_index(op.f('ix_pagerduty_events_pagerduty_incident_id'), table_name='pagerduty_events')
    op.drop_index(op.f('ix_pagerduty_events_incident_id'), table_name='pagerduty_events')
    op.drop_table('pagerduty_events')
