"""Maintenance windows, and incidents held back by them.

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'maintenance_windows',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('matchers', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('comment', sa.Text(), nullable=False),
        sa.Column('created_by', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('silence_id', sa.String(length=64), nullable=True),
        sa.CheckConstraint('ends_at > starts_at', name=op.f('ck_maintenance_windows_ends_after_start')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_maintenance_windows')),
    )
    op.create_index('ix_maintenance_windows_ends_at', 'maintenance_windows', ['ends_at'],
                    unique=False, postgresql_where=sa.text('ended_at IS NULL'))
    op.add_column('incidents', sa.Column('in_maintenance', sa.Boolean(),
                                         server_default='false', nullable=False))
    op.create_index('ix_incidents_in_maintenance', 'incidents', ['id'], unique=False,
                    postgresql_where=sa.text('in_maintenance'))


def downgrade() -> None:
    op.drop_index('ix_incidents_in_maintenance', table_name='incidents',
                  postgresql_where=sa.text('in_maintenance'))
    op.drop_column('incidents', 'in_maintenance')
    op.drop_index('ix_maintenance_windows_ends_at', table_name='maintenance_windows',
                  postgresql_where=sa.text('ended_at IS NULL'))
    op.drop_table('maintenance_windows')
