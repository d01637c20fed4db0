"""orders; duplicate detection; result codes, flags, QC and dilution

Existing results get empty values (server defaults) for the new columns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 18:44:21.184978
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.String(length=64), nullable=False),
        sa.Column("instrument", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("family_name", sa.String(length=128), nullable=False),
        sa.Column("given_name", sa.String(length=128), nullable=False),
        sa.Column("birth_date", sa.String(length=10), nullable=False),
        sa.Column("sex", sa.String(length=8), nullable=False),
        sa.Column("tests", sa.JSON(), nullable=False),
        sa.Column("priority", sa.String(length=2), nullable=False),
        sa.Column("action", sa.String(length=2), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orders_instrument"), ["instrument"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_specimen_id"), ["specimen_id"], unique=False)

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_messages_duplicate", ["connection", "content_hash"], unique=False)

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "lis_code", sa.String(length=64), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column("normalized_flags", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch_op.add_column(
            sa.Column(
                "qc_level", sa.String(length=32), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column("qc_lot", sa.String(length=64), nullable=False, server_default=sa.text("''"))
        )
        batch_op.add_column(
            sa.Column(
                "dilution", sa.String(length=32), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column("rerun", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("rerun")
        batch_op.drop_column("dilution")
        batch_op.drop_column("qc_lot")
        batch_op.drop_column("qc_level")
        batch_op.drop_column("normalized_flags")
        batch_op.drop_column("lis_code")

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_duplicate")
        batch_op.drop_column("content_hash")

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_specimen_id"))
        batch_op.drop_index(batch_op.f("ix_orders_instrument"))

    op.drop_table("orders")
