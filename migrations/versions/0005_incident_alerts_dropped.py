"""Incidents count the alerts they did not store past the cap.

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        'incidents',
        sa.Column('alerts_dropped', sa.Integer(), server_default='0', nullable=False),
    )


def downgrade() -> None:
    op.drop_column('incidents', 'alerts_dropped')
