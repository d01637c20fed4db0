"""rule set and biologist recorded with each decision

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 19:47:21.195551
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "ruleset", sa.String(length=128), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column(
                "biologist", sa.String(length=128), nullable=False, server_default=sa.text("''")
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("biologist")
        batch_op.drop_column("ruleset")
