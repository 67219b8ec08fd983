"""web ui: job_loss_points, the optimizer's losses over a job's run, so the web page draws a job's loss curves
(distortion, rate vs budget) from its start whenever it is opened (issue 9)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# An auto-incrementing 64-bit key on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "job_loss_points",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("phase", sa.String(length=64), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("estimated_ratio", sa.Float(), nullable=True),
        sa.Column("losses", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("job_loss_points", schema=None) as batch_op:
        batch_op.create_index("ix_job_loss_points_job_seq", ["job_id", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_loss_points", schema=None) as batch_op:
        batch_op.drop_index("ix_job_loss_points_job_seq")
    op.drop_table("job_loss_points")
