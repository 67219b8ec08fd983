"""client uploads: the resumable_uploads table (tus 1.0 uploads in progress, owned by a tenant, expiring)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resumable_uploads",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=True),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("resumable_uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_resumable_uploads_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index("ix_resumable_uploads_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("resumable_uploads", schema=None) as batch_op:
        batch_op.drop_index("ix_resumable_uploads_expires_at")
        batch_op.drop_index(batch_op.f("ix_resumable_uploads_tenant_id"))
    op.drop_table("resumable_uploads")
