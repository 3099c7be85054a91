"""The transactional outbox; Slack digest rows get a state of their own.

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox_messages',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('queue', sa.String(length=32), nullable=False),
    sa.Column('kwargs', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('options', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('relayed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_messages'))
    )
    op.create_index('ix_outbox_messages_unrelayed', 'outbox_messages', ['id'], unique=False,
                    postgresql_where=sa.text('relayed_at IS NULL'))
    op.add_column('notifications', sa.Column('swept_at', sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f('ck_notifications_status'), 'notifications', type_='check')
    op.create_check_constraint(
        op.f('ck_notifications_status'), 'notifications',
        "status IN ('pending','sending','digested','sent','failed')",
    )
    op.drop_index('ix_notifications_pending', table_name='notifications')
    op.create_index('ix_notifications_pending', 'notifications', ['status', 'created_at'],
                    unique=False,
                    postgresql_where=sa.text("status IN ('pending','sending','digested')"))


def downgrade() -> None:
    op.drop_index('ix_notifications_pending', table_name='notifications')
    op.create_index('ix_notifications_pending', 'notifications', ['status', 'created_at'],
                    unique=False, postgresql_where=sa.text("status IN ('pending','sending')"))
    op.execute("UPDATE notifications SET status = 'sending' WHERE status = 'digested'")
    op.drop_constraint(op.f('ck_notifications_status'), 'notifications', type_='check')
    op.create_check_constraint(op.f('ck_notifications_status'), 'notifications',
                               "status IN ('pending','sending','sent','failed')")
    op.drop_column('notifications', 'swept_at')
    op.drop_table('outbox_messages')
