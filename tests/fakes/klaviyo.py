"""Fake Klaviyo API: lists, profiles, bulk profile import jobs and list membership.

Base URL `http://host:port` (paths start with `/api`); `Authorization: Klaviyo-API-Key <key>`
and a `revision: YYYY-MM-DD` header on every call; JSON:API bodies. Requests are checked
against Klaviyo's official OpenAPI documents when they are present. Rate limits are fixed
windows per API key shared by all endpoints: `burst_limit` per second and `steady_limit` per
minute (10 and 150, as for the write endpoints). Profiles are identified by email only; a
list's `members` holds lower-cased emails.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from tests.fakes.app import Admission, Call, Endpoint, Vendor, build_app, json_response, no_content
from tests.fakes.jobs import DelayedWork
from tests.fakes.limits import FixedWindow
from tests.fakes.openapi import Problem, VendorSpec
from tests.fakes.state import FakeState

DEFAULT_API_KEY = "pk_fake_klaviyo_key"
SPEC_FILES = ["klaviyo-lists.openapi.json", "klaviyo-profiles.openapi.json"]
JSON_API = "application/vnd.api+json"
MAX_PROFILES = 10_000
MAX_IMPORT_BYTES = 5_000_000
MAX_RELATIONSHIPS = 1000
REVISION = re.compile(r"\d{4}-\d{2}-\d{2}(\.[A-Za-z0-9_-]+)?")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODES = {
    400: ("invalid", "Invalid input."),
    401: ("not_authenticated", "Authentication credentials were not provided."),
    403: ("permission_denied", "You do not have permission to perform this action."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    409: ("conflict", "Conflict."),
    413: ("request_too_large", "Request entity too large."),
    415: ("unsupported_media_type", "Unsupported media type."),
    429: ("throttled", "Request was throttled."),
    500: ("error", "A server error occurred."),
    503: ("service_unavailable", "Service unavailable."),
}


def now_text() -> str:
    return datetime.now(UTC).isoformat()


def profile_id() -> str:
    """26 characters of Crockford base32, the shape of Klaviyo's profile ids."""
    number = uuid.uuid4().int
    return "".join(CROCKFORD[(number >> (5 * shift)) & 31] for shift in range(25, -1, -1))


def list_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(6))


@dataclass(slots=True)
class Profile:
    id: str
    email: str
    attributes: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_text)
    updated: str = field(default_factory=now_text)


@dataclass
class KlaviyoList:
    id: str
    name: str
    members: set[str] = field(default_factory=set)  # lower-cased emails
    created: str = field(default_factory=now_text)
    updated: str = field(default_factory=now_text)


@dataclass
class ImportJob:
    id: str
    list_ids: list[str]
    total_count: int
    status: str = "queued"
    completed_count: int = 0
    failed_count: int = 0
    profile_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = field(default_factory=now_text)
    started_at: str | None = None
    completed_at: str | None = None
    work: DelayedWork | None = field(default=None, repr=False)


@dataclass
class KlaviyoState(FakeState):
    api_key: str = DEFAULT_API_KEY
    profiles: dict[str, Profile] = field(default_factory=dict)  # by lower-cased email
    profiles_by_id: dict[str, Profile] = field(default_factory=dict)
    lists: dict[str, KlaviyoList] = field(default_factory=dict)
    jobs: dict[str, ImportJob] = field(default_factory=dict)
    burst_limit: int = 10
    steady_limit: int = 150
    job_delay: float = 0.01
    burst_windows: dict[str, FixedWindow] = field(default_factory=dict)
    steady_windows: dict[str, FixedWindow] = field(default_factory=dict)
    # Klaviyo does not promise that an import error names its profile: False leaves out the
    # pointer and the original payload (a failure the client cannot attribute).
    import_errors_name_profiles: bool = True

    tunables: ClassVar[tuple[str, ...]] = ("burst_limit", "steady_limit", "job_delay")

    def lists_named(self, name: str) -> list[KlaviyoList]:
        return [each for each in self.lists.values() if each.name == name]

    def finish_jobs(self) -> None:
        """Run every pending import job now, whatever its delay."""
        for job in self.jobs.values():
            if job.work is not None:
                job.work.run()

    def summary(self, *, members: bool) -> dict[str, Any]:
        return {
            "profile_count": len(self.profiles),
            "lists": {
                each.id: {
                    "name": each.name,
                    "profile_count": len(each.members),
                    **({"members": sorted(each.members)} if members else {}),
                }
                for each in self.lists.values()
            },
            "jobs": {
                status: sum(1 for job in self.jobs.values() if job.status == status)
                for status in ("queued", "complete")
            },
        }


def errors(
    status: int,
    detail: str,
    *,
    pointer: str = "/data/",
    parameter: str | None = None,
    title: str | None = None,
) -> Response:
    code, default_title = CODES.get(status, ("error", "Error."))
    source: dict[str, str] = {"pointer": pointer}
    if parameter is not None:
        source["parameter"] = parameter
    error = {
        "id": str(uuid.uuid4()),
        "status": status,
        "code": code,
        "title": title or default_title,
        "detail": detail,
        "source": source,
    }
    return json_response({"errors": [error]}, status, media_type=JSON_API)


def dig(value: Any, *keys: str) -> Any:
    """`value[k1][k2]...`, or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def document(data: Any, status: int = 200, **extra: Any) -> Response:
    return json_response({"data": data, **extra}, status, media_type=JSON_API)


_STRING = re.compile(r"\s*(?:\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)')\s*")
_FILTER = re.compile(r"(equals|any)\(\s*([a-z_.]+)\s*,(.*)\)", re.DOTALL)


def _strings(raw: str) -> list[str] | None:
    bracketed = raw.strip().startswith("[") and raw.strip().endswith("]")
    inner = raw.strip()[1:-1] if bracketed else raw
    values: list[str] = []
    position = 0
    while True:
        match = _STRING.match(inner, position)
        if match is None:
            return None
        if match.group(1) is not None:
            values.append(json.loads(f'"{match.group(1)}"'))
        else:
            values.append(match.group(2).replace("\\'", "'"))
        position = match.end()
        if position == len(inner):
            break
        if inner[position] != ",":
            return None
        position += 1
    if not bracketed and len(values) != 1:
        return None
    return values


def parse_filter(text: str) -> tuple[str, list[str]] | None:
    """`equals(name,"x")`, `equals(email,['x'])` or `any(email,["a","b"])`: (field, values)."""
    match = _FILTER.fullmatch(text.strip())
    if match is None:
        return None
    values = _strings(match.group(3))
    if values is None:
        return None
    return match.group(2), values


def profile_field(profile: Profile, name: str) -> Any:
    if name == "email":
        return profile.email
    if name == "id":
        return profile.id
    return profile.attributes.get(name)


class KlaviyoFake(Vendor):
    name = "klaviyo"

    def __init__(self, state: KlaviyoState) -> None:
        super().__init__(state, VendorSpec.load("klaviyo", SPEC_FILES))
        self.klaviyo = state

    def endpoints(self) -> list[Endpoint]:
        lists = "/api/lists"
        jobs = "/api/profile-bulk-import-jobs"
        return [
            Endpoint("GET", lists, self.get_lists),
            Endpoint("POST", lists, self.create_list),
            Endpoint("GET", lists + "/{id}", self.get_list),
            Endpoint("PATCH", lists + "/{id}", self.update_list),
            Endpoint("DELETE", lists + "/{id}", self.delete_list),
            Endpoint("GET", lists + "/{id}/profiles", self.list_profiles),
            Endpoint("GET", lists + "/{id}/relationships/profiles", self.list_profile_ids),
            Endpoint("POST", lists + "/{id}/relationships/profiles", self.add_to_list),
            Endpoint("DELETE", lists + "/{id}/relationships/profiles", self.remove_from_list),
            Endpoint("GET", "/api/profiles", self.get_profiles),
            Endpoint("POST", jobs, self.bulk_import, max_body=MAX_IMPORT_BYTES),
            Endpoint("GET", jobs + "/{job_id}", self.get_job),
            Endpoint("GET", jobs + "/{id}/import-errors", self.job_errors),
            Endpoint("GET", jobs + "/{id}/profiles", self.job_profiles),
            Endpoint("GET", jobs + "/{id}/relationships/profiles", self.job_profile_ids),
        ]

    def error(self, status: int, detail: str, *, title: str | None = None) -> Response:
        return errors(status, detail, title=title)

    def invalid(self, problem: Problem) -> Response:
        pointer = problem.pointer if problem.pointer else "/data/"
        return errors(400, problem.message, pointer=pointer, parameter=problem.parameter)

    def authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("authorization")
        if header is None:
            return errors(401, "Missing private API key.")
        if header != f"Klaviyo-API-Key {self.klaviyo.api_key}":
            return errors(
                401, "Incorrect private API key.", title="Incorrect authentication credentials."
            )
        revision = request.headers.get("revision")
        if revision is None or not REVISION.fullmatch(revision):
            return errors(
                400,
                "The revision header is required, formatted YYYY-MM-DD.",
                parameter="revision",
            )
        return None

    def admit(self, request: Request) -> Admission:
        state = self.klaviyo
        key = request.headers.get("authorization", "")
        burst = state.burst_windows.setdefault(key, FixedWindow())
        steady = state.steady_windows.setdefault(key, FixedWindow())
        now = time.monotonic()
        windows = ((burst, state.burst_limit, 1.0), (steady, state.steady_limit, 60.0))
        waits = [
            window.resets_in(seconds, now)
            for window, limit, seconds in windows
            if window.full(limit, seconds, now)
        ]
        if waits:
            retry = max(1, math.ceil(max(waits)))
            denial = errors(429, f"Request was throttled. Expected available in {retry} seconds.")
            return Admission(denial=denial, headers={"Retry-After": str(retry)})
        burst.hit()
        steady.hit()
        # Report the window closer to running out.
        window, limit, seconds = min(windows, key=lambda each: each[0].remaining(each[1]))
        headers = {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(window.remaining(limit)),
            "RateLimit-Reset": str(math.ceil(window.resets_in(seconds, now))),
        }
        return Admission(headers=headers)

    # Views and paging.

    def _list_view(self, call: Call, target: KlaviyoList) -> dict[str, Any]:
        return {
            "type": "list",
            "id": target.id,
            "attributes": {
                "name": target.name,
                "created": target.created,
                "updated": target.updated,
                "opt_in_process": "single_opt_in",
            },
            "links": {"self": call.url(f"/api/lists/{target.id}/")},
        }

    def _profile_view(self, call: Call, profile: Profile) -> dict[str, Any]:
        return {
            "type": "profile",
            "id": profile.id,
            "attributes": {
                "email": profile.email,
                **profile.attributes,
                "created": profile.created,
                "updated": profile.updated,
            },
            "links": {"self": call.url(f"/api/profiles/{profile.id}/")},
        }

    def _job_view(self, call: Call, job: ImportJob) -> dict[str, Any]:
        expires = datetime.fromisoformat(job.created_at) + timedelta(days=7)
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": job.status,
                "created_at": job.created_at,
                "total_count": job.total_count,
                "completed_count": job.completed_count,
                "failed_count": job.failed_count,
                "completed_at": job.completed_at,
                "expires_at": expires.isoformat(),
                "started_at": job.started_at,
            },
            "relationships": {
                "lists": {"data": [{"type": "list", "id": each} for each in job.list_ids]},
            },
            "links": {"self": call.url(f"/api/profile-bulk-import-jobs/{job.id}/")},
        }

    @staticmethod
    def _page(
        call: Call, items: Sequence[Any], largest: int
    ) -> tuple[Sequence[Any], dict[str, str]] | Response:
        """One page by `page[size]` (default 20, or 10 for lists) and an offset cursor."""
        default = min(20, largest)
        try:
            size = int(call.query.get("page[size]", str(default)))
            offset = int(call.query.get("page[cursor]") or "0")
        except ValueError:
            return errors(400, "page[size] and page[cursor] are invalid.", parameter="page[size]")
        if not 1 <= size <= largest or offset < 0:
            return errors(
                400, f"page[size] must be between 1 and {largest}.", parameter="page[size]"
            )
        url = call.request.url
        links = {"self": str(url)}
        if offset + size < len(items):
            links["next"] = str(url.include_query_params(**{"page[cursor]": str(offset + size)}))
        if offset > 0:
            previous = str(max(0, offset - size))
            links["prev"] = str(url.include_query_params(**{"page[cursor]": previous}))
        return items[offset : offset + size], links

    @staticmethod
    def _filter(call: Call, allowed: tuple[str, ...]) -> tuple[str, set[str]] | Response | None:
        text = call.query.get("filter")
        if text is None:
            return None
        parsed = parse_filter(text)
        if parsed is None or parsed[0] not in allowed:
            return errors(
                400,
                f"Unsupported filter; this fake takes equals or any on {', '.join(allowed)}.",
                parameter="filter",
            )
        name, values = parsed
        return name, {value.lower() for value in values} if name == "email" else set(values)

    def _profiles_page(self, call: Call, source: Iterable[Profile], *, ids_only: bool) -> Response:
        found = self._filter(call, ("email", "id", "external_id"))
        if isinstance(found, Response):
            return found
        profiles = list(source)
        if found is not None:
            name, values = found
            profiles = [each for each in profiles if profile_field(each, name) in values]
        page = self._page(call, profiles, 100)
        if isinstance(page, Response):
            return page
        items, links = page
        if ids_only:
            return document([{"type": "profile", "id": each.id} for each in items], links=links)
        return document([self._profile_view(call, each) for each in items], links=links)

    # Handlers: plain functions, so each runs without interleaving with another request.

    def get_lists(self, call: Call) -> Response:
        found = self._filter(call, ("name", "id"))
        if isinstance(found, Response):
            return found
        lists = list(self.klaviyo.lists.values())
        if found is not None:
            name, values = found
            lists = [each for each in lists if (each.name if name == "name" else each.id) in values]
        page = self._page(call, lists, 10)
        if isinstance(page, Response):
            return page
        items, links = page
        return document([self._list_view(call, each) for each in items], links=links)

    def _list_name(self, body: Any) -> str | Response:
        if dig(body, "data", "type") != "list":
            return errors(400, "data.type must be 'list'.", pointer="/data/type")
        name = dig(body, "data", "attributes", "name")
        if not isinstance(name, str) or not name.strip():
            return errors(400, "A list name is required.", pointer="/data/attributes/name")
        return name

    def create_list(self, call: Call) -> Response:
        name = self._list_name(call.body)
        if isinstance(name, Response):
            return name
        target = KlaviyoList(list_id(), name)
        self.klaviyo.lists[target.id] = target
        return document(self._list_view(call, target), 201)

    def _target(self, call: Call) -> KlaviyoList | None:
        return self.klaviyo.lists.get(call.params["id"])

    def get_list(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, f"A list with id {call.params['id']} does not exist.")
        return document(self._list_view(call, target))

    def update_list(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, f"A list with id {call.params['id']} does not exist.")
        name = self._list_name(call.body)
        if isinstance(name, Response):
            return name
        if dig(call.body, "data", "id") not in (None, target.id):
            return errors(409, "data.id does not match the list in the path.", pointer="/data/id")
        target.name = name
        target.updated = now_text()
        return document(self._list_view(call, target))

    def delete_list(self, call: Call) -> Response:
        if self.klaviyo.lists.pop(call.params["id"], None) is None:
            return errors(404, f"A list with id {call.params['id']} does not exist.")
        return no_content()

    def list_profiles(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, f"A list with id {call.params['id']} does not exist.")
        return self._profiles_page(call, self._members(target), ids_only=False)

    def list_profile_ids(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, f"A list with id {call.params['id']} does not exist.")
        return self._profiles_page(call, self._members(target), ids_only=True)

    def _members(self, target: KlaviyoList) -> Iterable[Profile]:
        return (self.klaviyo.profiles[email] for email in target.members)

    def _relationship_ids(self, body: Any) -> list[str] | Response:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return errors(400, "data must be an array of profile identifiers.", pointer="/data")
        if len(data) > MAX_RELATIONSHIPS:
            return errors(
                400, f"At most {MAX_RELATIONSHIPS} profiles per request.", pointer="/data"
            )
        ids = []
        for index, item in enumerate(data):
            if dig(item, "type") != "profile" or not isinstance(dig(item, "id"), str):
                return errors(400, "Each entry is {type: profile, id}.", pointer=f"/data/{index}")
            ids.append(item["id"])
        return ids

    def add_to_list(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, f"A list with id {call.params['id']} does not exist.")
        ids = self._relationship_ids(call.body)
        if isinstance(ids, Response):
            return ids
        for index, each in enumerate(ids):
            if each not in self.klaviyo.profiles_by_id:
                return errors(400, f"Profile {each} does not exist.", pointer=f"/data/{index}/id")
        for each in ids:
            target.members.add(self.klaviyo.profiles_by_id[each].email)
        return no_content()

    def remove_from_list(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, f"A list with id {call.params['id']} does not exist.")
        ids = self._relationship_ids(call.body)
        if isinstance(ids, Response):
            return ids
        for each in ids:
            profile = self.klaviyo.profiles_by_id.get(each)
            if profile is not None:  # unknown ids change nothing
                target.members.discard(profile.email)
        return no_content()

    def get_profiles(self, call: Call) -> Response:
        return self._profiles_page(call, self.klaviyo.profiles.values(), ids_only=False)

    def bulk_import(self, call: Call) -> Response:
        data = dig(call.body, "data")
        if dig(data, "type") != "profile-bulk-import-job":
            return errors(400, "data.type must be 'profile-bulk-import-job'.", pointer="/data/type")
        profiles = dig(data, "attributes", "profiles", "data")
        where = "/data/attributes/profiles/data"
        if not isinstance(profiles, list) or not profiles:
            return errors(400, "Send at least one profile.", pointer=where)
        if len(profiles) > MAX_PROFILES:
            return errors(400, f"At most {MAX_PROFILES} profiles per job.", pointer=where)
        related = dig(data, "relationships", "lists", "data") or []
        if not isinstance(related, list):
            return errors(
                400, "relationships.lists.data must be an array.", pointer="/data/relationships"
            )
        list_ids = []
        for index, item in enumerate(related):
            target_id = dig(item, "id")
            if not isinstance(target_id, str) or target_id not in self.klaviyo.lists:
                return errors(
                    404,
                    f"A list with id {target_id} does not exist.",
                    pointer=f"/data/relationships/lists/data/{index}/id",
                )
            list_ids.append(target_id)
        job = ImportJob(secrets.token_hex(12), list_ids, len(profiles))
        job.work = DelayedWork(self.klaviyo.job_delay, lambda: self._apply_import(job, profiles))
        self.klaviyo.jobs[job.id] = job
        return document(self._job_view(call, job), 202)

    def _apply_import(self, job: ImportJob, profiles: list[Any]) -> None:
        state = self.klaviyo
        job.started_at = now_text()
        targets = [state.lists[each] for each in job.list_ids if each in state.lists]
        for index, item in enumerate(profiles):
            attributes = dig(item, "attributes")
            email = dig(attributes, "email")
            if not isinstance(attributes, dict) or not isinstance(email, str) or not email:
                detail = "This fake identifies profiles by email only."
                job.errors.append(self._import_error(job, index, detail, item))
                continue
            message = state.rejection(email)
            if message is None and not EMAIL.match(email):
                message = f"Invalid email address: {email}"
            if message is not None:
                job.errors.append(self._import_error(job, index, message, item))
                continue
            key = email.lower()
            profile = state.profiles.get(key)
            if profile is None:
                profile = Profile(profile_id(), key)
                state.profiles[key] = state.profiles_by_id[profile.id] = profile
            else:
                profile.updated = now_text()
            for name, value in attributes.items():
                if name == "properties" and isinstance(value, dict):
                    profile.attributes.setdefault("properties", {}).update(value)
                elif name != "email":
                    profile.attributes[name] = value
            job.profile_ids.append(profile.id)
            for target in targets:
                target.members.add(key)
        job.failed_count = len(job.errors)
        job.completed_count = job.total_count - job.failed_count
        job.status = "complete"
        job.completed_at = now_text()

    def _import_error(self, job: ImportJob, index: int, detail: str, item: Any) -> dict[str, Any]:
        named = self.klaviyo.import_errors_name_profiles
        pointer = "/data/attributes/profiles" + (f"/data/{index}" if named else "")
        return {
            "type": "import-error",
            "id": f"{job.id}-{index}",
            "attributes": {
                "code": "invalid",
                "title": "Invalid profile.",
                "detail": detail,
                "source": {"pointer": pointer},
                "original_payload": item if named and isinstance(item, dict) else None,
            },
        }

    def _job(self, call: Call, name: str) -> ImportJob | None:
        job = self.klaviyo.jobs.get(call.params[name])
        if job is not None and job.work is not None:
            job.work.settle()
        return job

    def get_job(self, call: Call) -> Response:
        job = self._job(call, "job_id")
        if job is None:
            return errors(404, f"Job {call.params['job_id']} does not exist.")
        extra: dict[str, Any] = {}
        if "lists" in call.query.get("include", "").split(","):
            extra["included"] = [
                self._list_view(call, self.klaviyo.lists[each])
                for each in job.list_ids
                if each in self.klaviyo.lists
            ]
        return document(self._job_view(call, job), **extra)

    def job_errors(self, call: Call) -> Response:
        job = self._job(call, "id")
        if job is None:
            return errors(404, f"Job {call.params['id']} does not exist.")
        page = self._page(call, job.errors, 100)
        if isinstance(page, Response):
            return page
        items, links = page
        return document(items, links=links)

    def _job_profiles(self, call: Call, *, ids_only: bool) -> Response:
        job = self._job(call, "id")
        if job is None:
            return errors(404, f"Job {call.params['id']} does not exist.")
        page = self._page(call, job.profile_ids, 100)
        if isinstance(page, Response):
            return page
        items, links = page
        profiles = [self.klaviyo.profiles_by_id[each] for each in items]
        if ids_only:
            return document([{"type": "profile", "id": each.id} for each in profiles], links=links)
        return document([self._profile_view(call, each) for each in profiles], links=links)

    def job_profiles(self, call: Call) -> Response:
        return self._job_profiles(call, ids_only=False)

    def job_profile_ids(self, call: Call) -> Response:
        return self._job_profiles(call, ids_only=True)


def create_app(state: KlaviyoState | None = None) -> Starlette:
    """The fake Klaviyo app; pass a state to inspect it or raise its rate limits."""
    return build_app(KlaviyoFake(state or KlaviyoState()))
