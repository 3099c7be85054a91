"""Routes: the destinations chosen for an incident, and the ledger keyed per destination.

Revision ID: 0010
Revises: 0009
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('incidents', sa.Column('route', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('notifications', sa.Column('destination', sa.Text(), server_default='', nullable=False))
    op.drop_constraint('uq_notifications_incident_id_channel_action_step', 'notifications', type_='unique')
    op.create_unique_constraint(
        op.f('uq_notifications_incident_id_channel_action_step_destination'), 'notifications',
        ['incident_id', 'channel', 'action', 'step', 'destination'],
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f('uq_notifications_incident_id_channel_action_step_destination'), 'notifications',
        type_='unique',
    )
    # Rows for a second destination of the same event cannot survive the older key.
    op.execute(
        "DELETE FROM notifications a USING notifications b WHERE a.id > b.id"
        " AND a.incident_id = b.incident_id AND a.channel = b.channel"
        " AND a.action = b.action AND a.step = b.step"
    )
    op.create_unique_constraint(
        op.f('uq_notifications_incident_id_channel_action_step'), 'notifications',
        ['incident_id', 'channel', 'action', 'step'],
    )
    op.drop_column('notifications', 'destination')
    op.drop_column('incidents', 'route')
