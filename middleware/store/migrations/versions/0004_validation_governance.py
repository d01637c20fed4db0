"""rule-set versions, change records, switches, devices, audit; previous value; correction rows

Existing outbox rows are ordinary result messages (server default "results"), existing
specimens come from the lab (server default "lab").

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 16:38:14.994254
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_at"), ["at"], unique=False)

    op.create_table(
        "autovalidation_switches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("autovalidation_switches", schema=None) as batch_op:
        batch_op.create_index("ux_switch_scope_name", ["scope", "name"], unique=True)

    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "ruleset_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("biologist", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ruleset_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ruleset_versions_sha256"), ["sha256"], unique=False)

    op.create_table(
        "change_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("change", sa.Text(), nullable=False),
        sa.Column("ruleset_version_id", sa.Integer(), nullable=True),
        sa.Column("expected", sa.JSON(), nullable=False),
        sa.Column("obtained", sa.JSON(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("anomaly", sa.Text(), nullable=True),
        sa.Column("probation_days", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ruleset_version_id"],
            ["ruleset_versions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("change_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_change_records_at"), ["at"], unique=False)

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "kind", sa.String(length=16), nullable=False, server_default=sa.text("'results'")
            )
        )

    with op.batch_alter_table("specimens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("origin", sa.String(length=8), nullable=False, server_default="lab")
        )
        batch_op.add_column(
            sa.Column("location", sa.String(length=128), nullable=False, server_default="")
        )

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_value", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("previous_unit", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("previous_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("specimens", schema=None) as batch_op:
        batch_op.drop_column("location")
        batch_op.drop_column("origin")

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("previous_at")
        batch_op.drop_column("previous_unit")
        batch_op.drop_column("previous_value")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("kind")

    with op.batch_alter_table("change_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_change_records_at"))

    op.drop_table("change_records")
    with op.batch_alter_table("ruleset_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ruleset_versions_sha256"))

    op.drop_table("ruleset_versions")
    op.drop_table("devices")
    with op.batch_alter_table("autovalidation_switches", schema=None) as batch_op:
        batch_op.drop_index("ux_switch_scope_name")

    op.drop_table("autovalidation_switches")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_at"))

    op.drop_table("audit")
