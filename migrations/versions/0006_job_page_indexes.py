"""job page indexes: the web page's jobs list filtered by state, and the compare page's jobs of one checkpoint,
read along an index instead of every job of the tenant (issue 9)

* ``ix_jobs_tenant_state_created`` (tenant, state, created): ``/ui?state=…`` and ``GET /v1/jobs?state=…``, their
  page and their count;
* ``ix_jobs_tenant_checkpoint_state_created`` (tenant, checkpoint, state, created): the compare page's
  checkpoint choices (grouped by checkpoint, covered by the index) and the newest succeeded jobs of one
  checkpoint.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_tenant_state_created", ["tenant_id", "state", "created_at"], unique=False)
        batch_op.create_index(
            "ix_jobs_tenant_checkpoint_state_created",
            ["tenant_id", "checkpoint_id", "state", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_checkpoint_state_created")
        batch_op.drop_index("ix_jobs_tenant_state_created")
