from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainSerializer, WithJsonSchema, field_validator

from segment_api.customers.schemas import BulkItems

# Both bulk upserts answer the same counts: one model, one schema in the document.
from segment_api.customers.schemas import BulkResult as BulkResult
from segment_api.fields import (
    MONEY_PATTERN,
    ExternalId,
    Money,
    RequestModel,
    Text,
    Timestamp,
    refuse_null,
    with_examples,
)

OrderStatus = Literal["placed", "cancelled", "refunded"]
# Published as what it is sent as, a string (the document describes bodies as validated).
MoneyOut = Annotated[
    Decimal,
    PlainSerializer(lambda value: f"{value:.2f}", return_type=str),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["129.90"]}),
]


NOT_NULL = ("customer_external_id", "total", "currency", "placed_at", "status")


class OrderIn(RequestModel):
    """On creation `customer_external_id`, `total` and `placed_at` are required; on update,
    fields left out keep their stored values."""

    customer_external_id: ExternalId | None = None
    total: Money | None = Field(None, description="Decimal string, two decimals, 0 or more")
    currency: Annotated[Text, Field(min_length=3, max_length=3)] | None = Field(
        None, description="Must equal the store currency (defaults to it)"
    )
    placed_at: Timestamp | None = Field(None, description="RFC 3339 with a time zone")
    status: OrderStatus | None = Field(None, description="Defaults to `placed` on creation")

    _not_null = field_validator(*NOT_NULL, mode="before")(refuse_null)

    model_config = with_examples(
        {
            "customer_external_id": "c-1001",
            "total": "129.90",
            "currency": "USD",
            "placed_at": "2026-03-01T10:15:00Z",
            "status": "placed",
        },
        not_null=NOT_NULL,
    )


class Order(BaseModel):
    external_id: str
    customer_external_id: str
    total: MoneyOut
    currency: str
    placed_at: datetime
    status: OrderStatus
    created_at: datetime
    updated_at: datetime


class OrderBulkItem(OrderIn):
    external_id: ExternalId

    model_config = with_examples(
        {
            "external_id": "o-5001",
            "customer_external_id": "c-1001",
            "total": "129.90",
            "placed_at": "2026-03-01T10:15:00Z",
        },
        not_null=NOT_NULL,
    )


class OrdersBulk(RequestModel):
    orders: BulkItems[OrderBulkItem]

    model_config = with_examples(
        {
            "orders": [
                {
                    "external_id": "o-5001",
                    "customer_external_id": "c-1001",
                    "total": "129.90",
                    "placed_at": "2026-03-01T10:15:00Z",
                }
            ]
        }
    )
