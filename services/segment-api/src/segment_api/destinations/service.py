"""Destinations: configuration validated per type, URLs kept out of our own network and free
of credentials, credentials encrypted at rest and shown masked, `version` bumped by every edit
(the ETag)."""

import uuid
from typing import Any

from pydantic import AnyHttpUrl, TypeAdapter, ValidationError
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
from segments_shared.netguard import AllowList, BlockedDestination, check_host, has_user_info
from segments_shared.redaction import strip_user_info
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
# Settings that are URLs the worker connects to (docs/vendors.md#private-addresses).
URL_FIELDS = ("base_url", "url")
USER_INFO = (
    "must not carry user information (user:pass@): credentials go in the destination's "
    "secret settings, where they are encrypted and masked"
)


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _invalid(errors: list[dict[str, str]]) -> ProblemException:
    detail = "; ".join(f"{error['pointer']}: {error['detail']}" for error in errors[:5])
    return ProblemException(422, detail, errors=errors)


def _config_errors(exc: ValidationError) -> ProblemException:
    return _invalid(
        [
            {
                "pointer": "/config" + "".join(f"/{_escape(part)}" for part in error["loc"]),
                "detail": error["msg"],
            }
            for error in exc.errors()
        ]
    )


_URL = TypeAdapter(AnyHttpUrl)


async def _url_errors(urls: dict[str, AnyHttpUrl], allow: AllowList) -> list[dict[str, str]]:
    """An error at each URL that carries credentials or points into our network. The host is
    resolved now (up to netguard.RESOLVE_SECONDS); the worker checks again the address it
    connects to, every time."""
    errors = []
    for name, url in urls.items():
        pointer = f"/config/{name}"
        if has_user_info(str(url)):
            errors.append({"pointer": pointer, "detail": USER_INFO})
            continue
        try:
            await check_host(str(url.host), allow)
        except BlockedDestination as exc:
            errors.append({"pointer": pointer, "detail": str(exc)})
    return errors


def _urls_of(config: DestinationConfig) -> dict[str, AnyHttpUrl]:
    return {name: url for name in URL_FIELDS if (url := getattr(config, name, None)) is not None}


def _urls_sent(patch: dict[str, Any]) -> dict[str, AnyHttpUrl]:
    """The URLs a PATCH sets, parsed as the configuration parses them; one that does not
    parse is left to the configuration's validation, which answers it."""
    urls = {}
    for name in URL_FIELDS:
        if patch.get(name) is None:
            continue
        try:
            urls[name] = _URL.validate_python(patch[name])
        except ValidationError:
            continue
    return urls


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
    for name in URL_FIELDS:
        # Saved before user information was refused: its password is not shown either.
        if isinstance(config.get(name), str):
            config[name] = strip_user_info(config[name])
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
    conn: AsyncConnection, body: DestinationCreate, secret_box: SecretBox, allow: AllowList
) -> Destination:
    config = _validate(body.type, body.config)
    if errors := await _url_errors(_urls_of(config), allow):
        raise _invalid(errors)
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
    allow: AllowList,
) -> Destination:
    # Only the URLs the body sets are checked: one saved before, which a shrunk allow-list
    # would refuse now, is not the client's error (the worker refuses to connect there), and
    # a 422 must point into the body. They are resolved before the first statement, so that
    # no transaction is open on the server and no row locked while DNS answers; their errors
    # are answered after those of a missing row, a stale If-Match and an invalid config, as
    # before.
    url_errors = await _url_errors(_urls_sent(body.config or {}), allow)
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
        if url_errors:
            raise _invalid(url_errors)
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
