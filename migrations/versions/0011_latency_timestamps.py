"""Latency: when an incident's current episode opened, and when a notification's webhook was accepted.

Revision ID: 0011
Revises: 0010
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('incidents', sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('notifications', sa.Column('received_at', sa.DateTime(timezone=True), nullable=True))
    # Only reopened incidents differ from created_at; the rest keep null, which reads as it.
    op.execute(
        "UPDATE incidents SET opened_at = latest.at FROM ("
        " SELECT incident_id, max(at) AS at FROM timeline_entries"
        " WHERE kind = 'reopened' GROUP BY incident_id) AS latest"
        " WHERE incidents.id = latest.incident_id"
    )


def downgrade() -> None:
    op.drop_column('notifications', 'received_at')
    op.drop_column('incidents', 'opened_at')
