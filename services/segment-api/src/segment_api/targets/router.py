from fastapi import APIRouter, Request, Response, status

from segment_api.deps import Db, ReadKey, WriteKey
from segment_api.parameters import SegmentId
from segment_api.responses import answers, tagged_answer
from segment_api.segments.router import created_segment
from segment_api.segments.schemas import Segment
from segment_api.targets import service
from segment_api.targets.schemas import (
    ClusterRequest,
    CombineRequest,
    CompareRequest,
    Comparison,
    DeduplicateRequest,
    DeduplicateResult,
    ReduceRequest,
    Segments,
    SplitRequest,
)

router = APIRouter(prefix="/v1/segments", tags=["target groups"])


@router.post(
    "/combine",
    operation_id="combineSegments",
    status_code=status.HTTP_201_CREATED,
    summary="Combine segments into a new manual segment: union, intersect or difference",
    description="`difference` keeps the members of the first segment that no other listed "
    "segment holds. The sources are left as they were.",
    responses={**tagged_answer(201, location=True), **answers(409, body=True)},
)
async def combine(
    body: CombineRequest, db: Db, _: WriteKey, request: Request, response: Response
) -> Segment:
    segment = await service.combine(db, body)
    return created_segment(request, response, segment)


@router.post(
    "/{segment_id}/split",
    operation_id="splitSegment",
    status_code=status.HTTP_201_CREATED,
    summary="Split a segment into new manual segments by weight",
    description="Members are ordered by a stable hash of (customer, seed) and dealt out in "
    "runs: each lands in exactly one part, part sizes follow the weights to within one "
    "member, and the same seed over the same members gives the same split.",
    responses=answers(404, 409, body=True),
)
async def split(segment_id: SegmentId, body: SplitRequest, db: Db, _: WriteKey) -> Segments:
    return Segments(items=await service.split(db, segment_id, body))


@router.post(
    "/{segment_id}/reduce",
    operation_id="reduceSegment",
    status_code=status.HTTP_201_CREATED,
    summary="A new manual segment of at most max_size members of this one",
    description="Chosen by `order_by` (ties to the longest-standing customer), or at random "
    "with a seed: the same seed keeps the same members.",
    responses={**tagged_answer(201, location=True), **answers(404, 409, body=True)},
)
async def reduce(
    segment_id: SegmentId,
    body: ReduceRequest,
    db: Db,
    _: WriteKey,
    request: Request,
    response: Response,
) -> Segment:
    segment = await service.reduce(db, segment_id, body)
    return created_segment(request, response, segment)


@router.post(
    "/compare",
    operation_id="compareSegments",
    summary="Sizes, and the intersection and Jaccard index of every pair",
    responses=answers(body=True),
)
async def compare(body: CompareRequest, db: Db, _: ReadKey) -> Comparison:
    return await service.compare(db, body)


@router.post(
    "/deduplicate",
    operation_id="deduplicateSegments",
    summary="Remove from each manual segment the customers an earlier one holds",
    description="The list is in priority order: the first segment keeps all its members, "
    "each later one loses those any earlier one holds, so no customer is in two of them. "
    "Answers the removed count per segment. The first segment is only read, so it may be a "
    "rule segment; a rule segment later in the list is refused (409): its rule decides its "
    "members.",
    responses=answers(409, body=True),
)
async def deduplicate(body: DeduplicateRequest, db: Db, _: WriteKey) -> DeduplicateResult:
    return await service.deduplicate(db, body)


@router.post(
    "/cluster",
    operation_id="clusterCustomers",
    status_code=status.HTTP_201_CREATED,
    summary="k new manual segments from k-means over the customers with placed orders",
    description="Features (recency in days, frequency, monetary value) are log-scaled and "
    "standardised; k-means (scikit-learn, seeded) is fitted on up to 20,000 buyers chosen "
    "by a stable hash, and every buyer joins the nearest centroid, so each lands in exactly "
    "one segment. Segments are named `<name_prefix> 1` ... `<name_prefix> k`, best customers "
    "(recent, frequent, high-spending) first; each description gives its centroid.",
    responses=answers(409, body=True),
)
async def cluster(body: ClusterRequest, db: Db, _: WriteKey) -> Segments:
    return Segments(items=await service.cluster_buyers(db, body))
