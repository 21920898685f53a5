import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, field_validator

from segment_api.fields import (
    Attributes,
    Email,
    ExternalId,
    RequestModel,
    Text,
    refuse_null,
    with_examples,
)

T = TypeVar("T")

EmailStatus = Literal["subscribed", "unsubscribed", "cleaned", "pending"]
# The items of a bulk upsert (customers, orders): all written, or none.
BulkItems = Annotated[list[T], Field(min_length=1, max_length=10_000)]
AddressPart = Annotated[Text, Field(max_length=200)]
PersonName = Annotated[Text, Field(max_length=200)]


class Address(RequestModel):
    line1: AddressPart | None = None
    line2: AddressPart | None = None
    city: AddressPart | None = None
    region: AddressPart | None = None
    postal_code: AddressPart | None = None
    country: AddressPart | None = None


class CustomerIn(RequestModel):
    """Fields left out keep their stored values; `null` clears a field."""

    email: Email | None = None
    first_name: PersonName | None = None
    last_name: PersonName | None = None
    email_status: EmailStatus | None = Field(
        None,
        description="`pending` when a customer is created with an email but no status: "
        "consent is never assumed",
    )
    attributes: Attributes | None = Field(
        None,
        description="Flat marketing attributes: string, number, boolean or date "
        "(ISO 8601 string) values. Replaces the stored attributes when given.",
        examples=[{"loyalty_tier": "gold", "vip": True, "birthday": "1990-04-12"}],
    )
    shipping_address: Address | None = None
    billing_address: Address | None = None

    _status_not_null = field_validator("email_status", mode="before")(refuse_null)

    @field_validator("attributes", mode="after")
    @classmethod
    def _null_clears_attributes(cls, value: dict[str, Any] | None) -> dict[str, Any]:
        return {} if value is None else value

    model_config = with_examples(
        {
            "email": "ada@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email_status": "subscribed",
            "attributes": {"loyalty_tier": "gold"},
        },
        not_null=("email_status",),
    )


class Rfm(BaseModel):
    """Scores 1 to 5 by quintile over customers with placed orders, 5 best."""

    recency_days: int = Field(description="Days since the last placed order")
    frequency: int = Field(description="Placed orders")
    monetary: str = Field(description="Revenue of the placed orders", examples=["412.50"])
    recency_score: int
    frequency_score: int
    monetary_score: int
    score: str = Field(description="The three scores as digits", examples=["545"])


class Customer(BaseModel):
    external_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    email_status: EmailStatus
    attributes: dict[str, Any]
    shipping_address: dict[str, Any] | None
    billing_address: dict[str, Any] | None
    rfm: Rfm | None = Field(description="Null until the customer has a placed order")
    created_at: datetime
    updated_at: datetime


class CustomerBulkItem(CustomerIn):
    external_id: ExternalId

    model_config = with_examples(
        {"external_id": "c-1001", "email": "ada@example.com", "email_status": "subscribed"},
        not_null=("email_status",),
    )


class CustomersBulk(RequestModel):
    customers: BulkItems[CustomerBulkItem]

    model_config = with_examples(
        {
            "customers": [
                {"external_id": "c-1001", "email": "ada@example.com", "email_status": "subscribed"},
                {"external_id": "c-1002", "first_name": "Grace"},
            ]
        }
    )


class BulkResult(BaseModel):
    created: int
    updated: int = Field(description="Every item that already existed, changed or not")


class CustomerSegment(BaseModel):
    """A segment the customer is in, and how: a manual segment's member (`manual`), by a rule
    segment's rule (`rule`) or by its explicit include (`include`)."""

    segment_id: uuid.UUID
    name: str
    kind: Literal["default", "user", "custom"]
    added_at: datetime
    via: Literal["manual", "rule", "include"]
