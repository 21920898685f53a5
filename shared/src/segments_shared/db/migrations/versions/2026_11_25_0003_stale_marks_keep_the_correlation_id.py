"""A KPI staleness mark keeps the correlation id of the latest change it stands for, so that
`metrics.updated` carries the id of a request that caused it (SPEC section 8).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 12:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("metrics_dirty_segments", sa.Column("correlation_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("metrics_dirty_segments", "correlation_id")
