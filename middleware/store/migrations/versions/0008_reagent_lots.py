"""reagent lots seen on QC runs and on patient results without QC (QC monitor state)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reagent_lots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("instrument", sa.String(length=64), nullable=False),
        sa.Column("test", sa.String(length=64), nullable=False),
        sa.Column("reagent_lot", sa.String(length=64), nullable=False),
        sa.Column("is_qc", sa.Boolean(), nullable=False),
        sa.Column("level", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reagent_lots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reagent_lots_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_reagent_lots_message_id"), ["message_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("reagent_lots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reagent_lots_message_id"))
        batch_op.drop_index(batch_op.f("ix_reagent_lots_at"))

    op.drop_table("reagent_lots")
