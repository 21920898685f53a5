from fastapi import APIRouter

from segment_api.deps import Db, ReadKey
from segment_api.responses import answers
from segment_api.rules import service
from segment_api.rules.schemas import Preview, PreviewRequest

router = APIRouter(prefix="/v1/segments", tags=["segments"])


@router.post(
    "/preview",
    operation_id="previewRule",
    summary="Preview a rule: size, a count per condition and sample members; saves nothing",
    description="Each condition (a field or segment condition) is counted on its own over "
    "every customer, keyed by its JSON pointer in the request body. The sample holds up to "
    "20 selected customers, the longest-standing first.",
    responses=answers(body=True),
)
async def preview_rule(body: PreviewRequest, db: Db, _: ReadKey) -> Preview:
    return await service.preview(db, body)
