import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.destinations import repository
from segment_api.destinations.schemas import Destination, DestinationCreate
from segment_api.problems import ProblemException, not_found
from segments_shared.destinations import CONFIG_MODELS, SECRET_FIELDS, account_key, split_secrets
from segments_shared.secrets import SecretBox, mask


def _config_errors(exc: ValidationError) -> ProblemException:
    errors = [
        {
            "pointer": "/config" + "".join(f"/{part}" for part in error["loc"]),
            "detail": error["msg"],
        }
        for error in exc.errors()
    ]
    return ProblemException(422, errors[0]["detail"], errors=errors)


def to_destination(row: Any, secret_box: SecretBox | None) -> Destination:
    destination = row
    config = dict(destination.config)
    for name in SECRET_FIELDS[destination.type]:
        secret = None
        if secret_box is not None:
            secret = secret_box.decrypt(destination.secrets).get(name)
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


async def create_destination(
    conn: AsyncConnection, body: DestinationCreate, secret_box: SecretBox
) -> Destination:
    try:
        config = CONFIG_MODELS[body.type].model_validate(body.config)
    except ValidationError as exc:
        raise _config_errors(exc) from exc
    public, secrets = split_secrets(body.type, config)
    row = await repository.insert_destination(
        conn,
        {
            "name": body.name,
            "type": body.type,
            "config": public,
            "secrets": secret_box.encrypt(secrets),
            "account_key": account_key(body.type, config, secrets),
        },
    )
    return to_destination(row, secret_box)


async def get_destination(
    conn: AsyncConnection, destination_id: uuid.UUID, secret_box: SecretBox | None
) -> Destination:
    row = await repository.get(conn, destination_id)
    if row is None:
        raise not_found("destination", destination_id)
    return to_destination(row, secret_box)
