"""Destinations: configuration validated per type, credentials encrypted at rest and shown
masked, `version` bumped by every edit (the ETag)."""

import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.destinations import repository
from segment_api.destinations.schemas import Destination, DestinationCreate, DestinationUpdate
from segment_api.listing import PageRequest
from segment_api.pagination import Page
from segment_api.problems import ProblemException, not_found
from segment_api.versions import check_if_match
from segments_shared.db.types import AnyRow
from segments_shared.destinations import (
    CONFIG_MODELS,
    SECRET_FIELDS,
    DestinationConfig,
    account_key,
    split_secrets,
)
from segments_shared.secrets import SecretBox, mask

# What a destination points at: changing one of these makes it another place, where our
# record of what it holds means nothing.
TARGET_FIELDS: dict[str, tuple[str, ...]] = {
    "mailchimp": ("list_id",),
    "sendgrid": (),
    "klaviyo": (),
    "webhook": ("url",),
    "commerce": ("store_id",),
}


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _config_errors(exc: ValidationError) -> ProblemException:
    errors = [
        {
            "pointer": "/config" + "".join(f"/{_escape(part)}" for part in error["loc"]),
            "detail": error["msg"],
        }
        for error in exc.errors()
    ]
    detail = "; ".join(f"{error['pointer']}: {error['detail']}" for error in errors[:5])
    return ProblemException(422, detail, errors=errors)


def _validate(destination_type: str, values: dict[str, Any]) -> DestinationConfig:
    try:
        return CONFIG_MODELS[destination_type].model_validate(values)
    except ValidationError as exc:
        raise _config_errors(exc) from exc


def to_destination(row: Any, secret_box: SecretBox | None) -> Destination:
    destination = row
    config = dict(destination.config)
    secrets = secret_box.decrypt(destination.secrets) if secret_box is not None else {}
    for name in SECRET_FIELDS[destination.type]:
        secret = secrets.get(name)
        config[name] = mask(secret) if secret else "****"
    return Destination(
        id=destination.id,
        name=destination.name,
        type=destination.type,
        config=config,
        version=destination.version,
        created_at=destination.created_at,
        updated_at=destination.updated_at,
    )


def _stored(destination_type: str, config: DestinationConfig, box: SecretBox) -> dict[str, Any]:
    public, secrets = split_secrets(destination_type, config)
    return {
        "config": public,
        "secrets": box.encrypt(secrets),
        "account_key": account_key(destination_type, config, secrets),
    }


async def create_destination(
    conn: AsyncConnection, body: DestinationCreate, secret_box: SecretBox
) -> Destination:
    config = _validate(body.type, body.config)
    row = await repository.insert_destination(
        conn, {"name": body.name, "type": body.type, **_stored(body.type, config, secret_box)}
    )
    return to_destination(row, secret_box)


async def get_destination(
    conn: AsyncConnection, destination_id: uuid.UUID, secret_box: SecretBox | None
) -> Destination:
    row = await repository.get(conn, destination_id)
    if row is None:
        raise not_found("destination", destination_id)
    return to_destination(row, secret_box)


async def list_destinations(
    conn: AsyncConnection,
    secret_box: SecretBox | None,
    *,
    destination_type: str | None,
    page: PageRequest,
) -> Page[Destination]:
    rows = await repository.list_page(
        conn, destination_type=destination_type, after=page.after_created(), limit=page.limit
    )
    return Page(
        items=[to_destination(row, secret_box) for row in rows[: page.limit]],
        next_cursor=page.next_cursor(rows, lambda row: (row.created_at.isoformat(), str(row.id))),
    )


def _merged_config(row: AnyRow, patch: dict[str, Any], secret_box: SecretBox) -> dict[str, Any]:
    """The current configuration with the patch applied (JSON merge patch, one level):
    `null` drops a setting; a credential sent back masked keeps its value."""
    current = {**row.config, **secret_box.decrypt(row.secrets)}
    merged = dict(current)
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        elif (
            name in SECRET_FIELDS[row.type]
            and isinstance(value, str)
            and name in current
            and value == mask(str(current[name]))
        ):
            continue
        else:
            merged[name] = value
    return merged


def _retargeted(row: AnyRow, old: DestinationConfig, new: DestinationConfig) -> bool:
    if old.resolved_base_url() != new.resolved_base_url():
        return True
    return any(getattr(old, name) != getattr(new, name) for name in TARGET_FIELDS[row.type])


async def update_destination(
    conn: AsyncConnection,
    destination_id: uuid.UUID,
    body: DestinationUpdate,
    if_match: str | None,
    secret_box: SecretBox | None,
) -> Destination:
    row = await repository.lock(conn, destination_id)
    if row is None:
        raise not_found("destination", destination_id)
    check_if_match(if_match, row.version)
    values: dict[str, Any] = {}
    if body.name is not None and body.name != row.name:
        values["name"] = body.name
    if body.config is not None:
        if secret_box is None:
            raise ProblemException(
                503, "SEGMENTS_SECRET_KEY is not set: destination credentials cannot be read"
            )
        old = _validate(row.type, {**row.config, **secret_box.decrypt(row.secrets)})
        new = _validate(row.type, _merged_config(row, body.config, secret_box))
        if _retargeted(row, old, new):
            if await repository.has_active_run(conn, destination_id):
                raise ProblemException(
                    409,
                    "a sync of this destination is queued or running: change where it points "
                    "once it has finished",
                )
            await repository.forget_remote_segments(conn, destination_id)
        if new != old:
            values.update(_stored(row.type, new, secret_box))
    if not values:
        # Nothing changes: no new version, so that a client's If-Match still holds.
        return to_destination(row, secret_box)
    updated = await repository.update_destination(conn, destination_id, values)
    return to_destination(updated, secret_box)


async def delete_destination(
    conn: AsyncConnection, destination_id: uuid.UUID, if_match: str | None
) -> None:
    """Its runs, and the record of what it holds, go with it; the vendor is not touched."""
    row = await repository.lock(conn, destination_id, deleting=True)
    if row is None:
        raise not_found("destination", destination_id)
    check_if_match(if_match, row.version)
    await repository.delete_destination(conn, destination_id)
