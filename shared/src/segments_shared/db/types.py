"""Typing helpers for SQLAlchemy 2.1, whose `Row` is generic over its column types."""

from typing import Any, TypeAlias

from sqlalchemy import Row

AnyRow: TypeAlias = Row[*tuple[Any, ...]]
