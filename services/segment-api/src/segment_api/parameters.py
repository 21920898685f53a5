"""Path and header parameters that several routers take, declared once so that each keeps
one name, type and description across the OpenAPI document."""

import uuid
from typing import Annotated

from fastapi import Header, Path

SegmentId = Annotated[uuid.UUID, Path(description="The segment's id")]
DestinationId = Annotated[uuid.UUID, Path(description="The destination's id")]

# If-Match carries the ETag a client last read; the services compare it with the version.
SegmentIfMatch = Annotated[
    str | None,
    Header(description="The segment's ETag; on mismatch the request fails with 412"),
]
DestinationIfMatch = Annotated[
    str | None,
    Header(description="The destination's ETag; on mismatch the request fails with 412"),
]

# If-None-Match carries an ETag read before: a GET answers 304, without a body, while the
# resource still has it (responses.unless_modified).
IfNoneMatch = Annotated[
    str | None,
    Header(description="An ETag read before: 304 without a body while it is still current"),
]
