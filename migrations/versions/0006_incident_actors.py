"""Incidents remember who acknowledged and who resolved them.

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('incidents', sa.Column('acknowledged_by', postgresql.JSONB(), nullable=True))
    op.add_column('incidents', sa.Column('resolved_by', postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column('incidents', 'resolved_by')
    op.drop_column('incidents', 'acknowledged_by')
