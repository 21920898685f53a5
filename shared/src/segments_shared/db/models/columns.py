"""Column types that several tables share."""

from datetime import datetime
from typing import Annotated

from sqlalchemy import DateTime, func
from sqlalchemy.orm import mapped_column

# A time the database sets to now() when an insert leaves it out (`Mapped[DefaultNow]`).
DefaultNow = Annotated[datetime, mapped_column(DateTime(timezone=True), server_default=func.now())]
