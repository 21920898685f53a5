"""Target-group operations (docs/contract.md#target-group-operations, from SAP CRM)."""

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictFloat, StrictInt

from segment_api.fields import RequestModel, Text, with_examples
from segment_api.rules.definition import OrderBy
from segment_api.segments.schemas import Description, Segment, SegmentName

SegmentIds = Annotated[list[uuid.UUID], Field(min_length=2, max_length=50)]
Seed = Annotated[Text, Field(max_length=200, description="Same seed, same choice")]
Feature = Literal["recency", "frequency", "monetary"]
FEATURES: tuple[Feature, ...] = ("recency", "frequency", "monetary")


class CombineRequest(RequestModel):
    operation: Literal["union", "intersect", "difference"] = Field(
        description="`difference` is the first segment minus all the others"
    )
    segment_ids: SegmentIds
    name: SegmentName
    description: Description | None = None

    model_config = with_examples(
        {
            "operation": "union",
            "segment_ids": [
                "0b8e6a1c-3f4f-4d8e-9a34-2f7d0f6f1a10",
                "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
            ],
            "name": "Winter campaign",
        }
    )


class SplitPart(RequestModel):
    name: SegmentName
    weight: StrictFloat = Field(ge=0, le=1e9, description="Relative share of the members")


class SplitRequest(RequestModel):
    parts: Annotated[list[SplitPart], Field(min_length=2, max_length=100)]
    seed: Seed = ""

    model_config = with_examples(
        {
            "parts": [{"name": "Test A", "weight": 50}, {"name": "Test B", "weight": 50}],
            "seed": "2026-winter",
        }
    )


class ReduceRequest(RequestModel):
    max_size: StrictInt = Field(ge=1, le=1_000_000_000)
    order_by: OrderBy = "random"
    seed: Seed = Field("", description="For `random`: the same seed keeps the same members")
    name: SegmentName
    description: Description | None = None

    model_config = with_examples(
        {"max_size": 5000, "order_by": "total_revenue_desc", "name": "Top 5,000 by revenue"}
    )


class CompareRequest(RequestModel):
    segment_ids: Annotated[list[uuid.UUID], Field(min_length=2, max_length=20)]

    model_config = with_examples(
        {
            "segment_ids": [
                "0b8e6a1c-3f4f-4d8e-9a34-2f7d0f6f1a10",
                "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
            ]
        }
    )


class DeduplicateRequest(RequestModel):
    segment_ids: SegmentIds = Field(
        description="Manual segments, highest priority first: each keeps only the customers "
        "no earlier one holds"
    )


class ClusterRequest(RequestModel):
    k: StrictInt = Field(ge=2, le=20, description="Number of clusters (segments) to make")
    features: Annotated[list[Feature], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: list(FEATURES),
        description="Log-scaled and standardised before clustering",
    )
    name_prefix: Annotated[SegmentName, Field(max_length=190)] = "Cluster"
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1, description="The same seed, the same clusters")

    model_config = with_examples(
        {"k": 4, "features": ["recency", "frequency", "monetary"], "name_prefix": "Cluster"}
    )


class Segments(BaseModel):
    items: list[Segment]


class SegmentSize(BaseModel):
    segment_id: uuid.UUID
    name: str
    size: int


class Overlap(BaseModel):
    segment_ids: tuple[uuid.UUID, uuid.UUID]
    intersection: int
    union: int
    jaccard: float | None = Field(
        description="intersection / union; null when both segments are empty"
    )


class Comparison(BaseModel):
    segments: list[SegmentSize]
    pairs: list[Overlap] = Field(description="Every pair, in the order the ids were given")


class Deduplicated(BaseModel):
    segment_id: uuid.UUID
    name: str
    removed: int
    member_count: int


class DeduplicateResult(BaseModel):
    items: list[Deduplicated]
