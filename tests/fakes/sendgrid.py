"""Fake SendGrid Marketing Campaigns: contacts, lists, import jobs and exports.

Base URL `http://host:port` (paths start with `/v3`); `Authorization: Bearer <key>`. Every
request is checked against SendGrid's official OpenAPI documents when they are present.
Upserts are asynchronous, as at SendGrid: `PUT /v3/marketing/contacts` answers 202 with a job
that takes effect `job_delay` seconds later. Every answer carries `X-RateLimit-Limit`,
`-Remaining` and `-Reset` (epoch seconds) for a window of `rate_limit` requests per
`rate_window` seconds per API key; beyond it, 429. Contacts are identified by email only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tests.fakes.app import Admission, Call, Endpoint, Vendor, build_app, json_response, no_content
from tests.fakes.jobs import DelayedWork
from tests.fakes.limits import FixedWindow
from tests.fakes.openapi import Problem, VendorSpec
from tests.fakes.state import FakeState

DEFAULT_API_KEY = "SG.fake-sendgrid-key"
SPEC_FILES = ["sendgrid-marketing-contacts.openapi.json", "sendgrid-marketing-lists.openapi.json"]
MAX_CONTACTS = 30_000
MAX_UPSERT_BYTES = 6_000_000
MAX_SEARCH_EMAILS = 100
MAX_PAGE_SIZE = 1000
IDENTIFIERS = ("email", "phone_number_id", "external_id", "anonymous_id")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CONTACT_FIELDS = (
    "first_name",
    "last_name",
    "address_line_1",
    "address_line_2",
    "city",
    "state_province_region",
    "postal_code",
    "country",
)


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Contact:
    id: str
    email: str
    fields: dict[str, Any] = field(default_factory=dict)
    list_ids: set[str] = field(default_factory=set)
    created_at: str = field(default_factory=now_text)
    updated_at: str = field(default_factory=now_text)


@dataclass
class ContactList:
    """A list; `members` holds the lower-cased emails of its contacts."""

    id: str
    name: str
    members: set[str] = field(default_factory=set)


@dataclass
class Job:
    """An import job (`upsert`) or a removal from a list (reported as `delete`)."""

    id: str
    job_type: str
    requested_count: int
    status: str = "pending"
    created_count: int = 0
    updated_count: int = 0
    deleted_count: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    started_at: str = field(default_factory=now_text)
    finished_at: str | None = None
    work: DelayedWork | None = field(default=None, repr=False)

    def finish(self) -> None:
        self.finished_at = now_text()
        if not self.errors:
            self.status = "completed"
        elif len(self.errors) >= self.requested_count:
            self.status = "failed"
        else:
            self.status = "errored"


@dataclass
class Export:
    id: str
    list_ids: list[str]
    file_type: str
    status: str = "pending"
    created_at: str = field(default_factory=now_text)
    completed_at: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    work: DelayedWork | None = field(default=None, repr=False)


@dataclass
class SendGridState(FakeState):
    api_key: str = DEFAULT_API_KEY
    contacts: dict[str, Contact] = field(default_factory=dict)  # by lower-cased email
    contacts_by_id: dict[str, Contact] = field(default_factory=dict)
    lists: dict[str, ContactList] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    exports: dict[str, Export] = field(default_factory=dict)
    rate_limit: int = 600
    rate_window: float = 60.0
    job_delay: float = 0.01
    windows: dict[str, FixedWindow] = field(default_factory=dict)

    tunables: ClassVar[tuple[str, ...]] = ("rate_limit", "rate_window", "job_delay")

    def list_named(self, name: str) -> ContactList | None:
        return next((each for each in self.lists.values() if each.name == name), None)

    def finish_jobs(self) -> None:
        """Run every pending job and export now, whatever their delay."""
        works = [job.work for job in self.jobs.values()]
        works += [export.work for export in self.exports.values()]
        for work in works:
            if work is not None:
                work.run()

    def summary(self, *, members: bool) -> dict[str, Any]:
        return {
            "contact_count": len(self.contacts),
            "lists": {
                each.id: {
                    "name": each.name,
                    "contact_count": len(each.members),
                    **({"members": sorted(each.members)} if members else {}),
                }
                for each in self.lists.values()
            },
            "jobs": {
                status: sum(1 for job in self.jobs.values() if job.status == status)
                for status in ("pending", "completed", "errored", "failed")
            },
        }


def errors(status: int, message: str, field_name: str | None = None) -> Response:
    return json_response({"errors": [{"field": field_name, "message": message}]}, status)


def dotted(pointer: str) -> str:
    """A JSON pointer as SendGrid names fields: `/contacts/3/email` is `contacts[3].email`."""
    text = ""
    for part in pointer.strip("/").split("/"):
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text


def contact_view(contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "email": contact.email,
        **{name: contact.fields.get(name, "") for name in CONTACT_FIELDS},
        "alternate_emails": [],
        "list_ids": sorted(contact.list_ids),
        "segment_ids": [],
        "custom_fields": contact.fields.get("custom_fields", {}),
        "created_at": contact.created_at,
        "updated_at": contact.updated_at,
    }


class SendGridFake(Vendor):
    name = "sendgrid"

    def __init__(self, state: SendGridState) -> None:
        super().__init__(state, VendorSpec.load("sendgrid", SPEC_FILES))
        self.sendgrid = state

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("PUT", "/v3/marketing/contacts", self.upsert, max_body=MAX_UPSERT_BYTES),
            Endpoint("GET", "/v3/marketing/contacts/imports/{id}", self.get_job),
            Endpoint("POST", "/v3/marketing/contacts/search/emails", self.search_emails),
            Endpoint("POST", "/v3/marketing/contacts/exports", self.export),
            Endpoint("GET", "/v3/marketing/contacts/exports/{id}", self.get_export),
            Endpoint("POST", "/v3/marketing/lists", self.create_list),
            Endpoint("GET", "/v3/marketing/lists", self.get_lists),
            Endpoint("GET", "/v3/marketing/lists/{id}", self.get_list),
            Endpoint("PATCH", "/v3/marketing/lists/{id}", self.update_list),
            Endpoint("DELETE", "/v3/marketing/lists/{id}", self.delete_list),
            Endpoint("DELETE", "/v3/marketing/lists/{id}/contacts", self.remove_from_list),
        ]

    def error(self, status: int, detail: str, *, title: str | None = None) -> Response:
        if status == 429:
            return errors(429, "too many requests")
        return errors(status, detail)

    def invalid(self, problem: Problem) -> Response:
        if problem.parameter is not None:
            return errors(400, problem.message, problem.parameter)
        return errors(400, problem.message, dotted(problem.pointer) if problem.pointer else None)

    def authenticate(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.sendgrid.api_key}":
            return errors(401, "authorization required")
        return None

    def admit(self, request: Request) -> Admission:
        state = self.sendgrid
        key = request.headers.get("authorization", "")
        window = state.windows.setdefault(key, FixedWindow())
        now = time.monotonic()
        full = window.full(state.rate_limit, state.rate_window, now)
        if not full:
            window.hit()
        reset = math.ceil(time.time() + window.resets_in(state.rate_window, now))
        headers = {
            "X-RateLimit-Limit": str(state.rate_limit),
            "X-RateLimit-Remaining": str(window.remaining(state.rate_limit)),
            "X-RateLimit-Reset": str(reset),
        }
        return Admission(denial=errors(429, "too many requests") if full else None, headers=headers)

    def control_routes(self) -> list[BaseRoute]:
        state = self.sendgrid

        async def job_errors(request: Request) -> Response:
            job = state.jobs.get(request.path_params["id"])
            if job is None:
                return errors(404, "job not found")
            return json_response({"errors": job.errors})

        async def download(request: Request) -> Response:
            export = state.exports.get(request.path_params["id"])
            if export is None or export.status != "ready":
                return errors(404, "export not found")
            if export.file_type == "json":
                text = "".join(json.dumps(row) + "\n" for row in export.rows)
                return Response(text, media_type="application/x-ndjson")
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["CONTACT_ID", "EMAIL", "FIRST_NAME", "LAST_NAME"])
            for row in export.rows:
                writer.writerow(
                    [row["contact_id"], row["email"], row["first_name"], row["last_name"]]
                )
            return Response(out.getvalue(), media_type="text/csv")

        return [
            Route("/_fake/jobs/{id}/errors", job_errors, methods=["GET"]),
            Route("/_fake/exports/{id}", download, methods=["GET"]),
        ]

    # Handlers: plain functions, so each runs without interleaving with another request.

    def _missing_lists(self, list_ids: list[str]) -> Response | None:
        for index, list_id in enumerate(list_ids):
            if list_id not in self.sendgrid.lists:
                return errors(404, f"list {list_id} does not exist", f"list_ids[{index}]")
        return None

    def upsert(self, call: Call) -> Response:
        body = call.body
        if not isinstance(body, dict) or not isinstance(body.get("contacts"), list):
            return errors(400, "contacts is required", "contacts")
        contacts: list[Any] = body["contacts"]
        list_ids = body.get("list_ids", [])
        if not 1 <= len(contacts) <= MAX_CONTACTS:
            return errors(400, f"send between 1 and {MAX_CONTACTS} contacts", "contacts")
        if not isinstance(list_ids, list) or not all(isinstance(each, str) for each in list_ids):
            return errors(400, "list_ids must be an array of list ids", "list_ids")
        missing = self._missing_lists(list_ids)
        if missing is not None:
            return missing
        for index, contact in enumerate(contacts):
            if not isinstance(contact, dict) or not any(contact.get(key) for key in IDENTIFIERS):
                return errors(
                    400,
                    "a contact needs at least one of email, phone_number_id, external_id or "
                    "anonymous_id",
                    f"contacts[{index}]",
                )
        job = Job(str(uuid.uuid4()), "upsert", len(contacts))
        job.work = DelayedWork(
            self.sendgrid.job_delay, lambda: self._apply_upsert(job, contacts, list_ids)
        )
        self.sendgrid.jobs[job.id] = job
        return json_response({"job_id": job.id}, 202)

    def _apply_upsert(self, job: Job, contacts: list[dict[str, Any]], list_ids: list[str]) -> None:
        state = self.sendgrid
        for contact in contacts:
            email = contact.get("email")
            if not isinstance(email, str):
                job.errors.append(
                    {"email": "", "message": "this fake identifies contacts by email only"}
                )
                continue
            message = state.rejection(email)
            if message is None and not EMAIL.match(email):
                message = "invalid email"
            if message is not None:
                job.errors.append({"email": email, "message": message})
                continue
            key = email.lower()
            found = state.contacts.get(key)
            if found is None:
                found = Contact(str(uuid.uuid4()), key)
                state.contacts[key] = state.contacts_by_id[found.id] = found
                job.created_count += 1
            else:
                found.updated_at = now_text()
                job.updated_count += 1
            found.fields.update(
                (name, value) for name, value in contact.items() if name not in IDENTIFIERS
            )
            for list_id in list_ids:
                target = state.lists.get(list_id)
                if target is not None:  # a list deleted meanwhile is skipped
                    target.members.add(key)
                    found.list_ids.add(list_id)
        job.finish()

    def get_job(self, call: Call) -> Response:
        job = self.sendgrid.jobs.get(call.params["id"])
        if job is None:
            return errors(404, "job not found", "id")
        if job.work is not None:
            job.work.settle()
        results: dict[str, Any] = {
            "requested_count": job.requested_count,
            "created_count": job.created_count,
            "updated_count": job.updated_count,
            "deleted_count": job.deleted_count,
            "errored_count": len(job.errors),
        }
        if job.errors:
            results["errors_url"] = call.url(f"/_fake/jobs/{job.id}/errors")
        view: dict[str, Any] = {
            "id": job.id,
            "status": job.status,
            "job_type": job.job_type,
            "results": results,
            "started_at": job.started_at,
        }
        if job.finished_at is not None:
            view["finished_at"] = job.finished_at
        return json_response(view)

    def search_emails(self, call: Call) -> Response:
        body = call.body
        emails = body.get("emails") if isinstance(body, dict) else None
        if not isinstance(emails, list) or not all(isinstance(each, str) for each in emails):
            return errors(400, "emails is required", "emails")
        if len(emails) > MAX_SEARCH_EMAILS:
            return errors(400, f"at most {MAX_SEARCH_EMAILS} emails per search", "emails")
        result: dict[str, Any] = {}
        found = 0
        for email in emails:
            if not email:
                continue  # SendGrid leaves empty strings out
            contact = self.sendgrid.contacts.get(email.lower())
            if contact is None:
                result[email.lower()] = {"error": "contact not found"}
            else:
                result[email.lower()] = {"contact": contact_view(contact)}
                found += 1
        if found == 0:
            return errors(404, "contacts not found")
        return json_response({"result": result})

    def export(self, call: Call) -> Response:
        body = call.body if isinstance(call.body, dict) else {}
        list_ids = body.get("list_ids", [])
        if body.get("segment_ids"):
            return errors(400, "this fake exports lists only", "segment_ids")
        if not isinstance(list_ids, list) or not list_ids:
            return errors(400, "list_ids is required", "list_ids")
        missing = self._missing_lists(list_ids)
        if missing is not None:
            return missing
        file_type = body.get("file_type", "csv")
        if file_type not in ("csv", "json"):
            return errors(400, "file_type must be csv or json", "file_type")
        export = Export(str(uuid.uuid4()), list_ids, file_type)
        export.work = DelayedWork(self.sendgrid.job_delay, lambda: self._apply_export(export))
        self.sendgrid.exports[export.id] = export
        return json_response(
            {
                "id": export.id,
                "_metadata": {"self": call.url(f"/v3/marketing/contacts/exports/{export.id}")},
            },
            202,
        )

    def _apply_export(self, export: Export) -> None:
        state = self.sendgrid
        emails: set[str] = set()
        for list_id in export.list_ids:
            target = state.lists.get(list_id)
            if target is not None:
                emails |= target.members
        for email in sorted(emails):
            contact = state.contacts[email]
            export.rows.append(
                {
                    "contact_id": contact.id,
                    "email": contact.email,
                    "first_name": contact.fields.get("first_name", ""),
                    "last_name": contact.fields.get("last_name", ""),
                    "list_ids": sorted(contact.list_ids),
                }
            )
        export.status = "ready"
        export.completed_at = now_text()

    def get_export(self, call: Call) -> Response:
        export = self.sendgrid.exports.get(call.params["id"])
        if export is None:
            return errors(404, "export not found", "id")
        if export.work is not None:
            export.work.settle()
        expires = datetime.now(UTC) + timedelta(days=3)
        view: dict[str, Any] = {
            "id": export.id,
            "status": export.status,
            "created_at": export.created_at,
            "updated_at": export.completed_at or export.created_at,
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "contact_count": len(export.rows),
        }
        if export.status == "ready":
            view["completed_at"] = export.completed_at
            view["urls"] = [call.url(f"/_fake/exports/{export.id}")]
        return json_response(view)

    def _list_view(self, call: Call, target: ContactList) -> dict[str, Any]:
        return {
            "id": target.id,
            "name": target.name,
            "contact_count": len(target.members),
            "_metadata": {"self": call.url(f"/v3/marketing/lists/{target.id}")},
        }

    def _list_name(self, body: Any, current: ContactList | None) -> str | Response:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            return errors(400, "name is required (1 to 100 characters)", "name")
        taken = self.sendgrid.list_named(name)
        if taken is not None and taken is not current:
            return errors(400, "list name already exists", "name")
        return name

    def create_list(self, call: Call) -> Response:
        name = self._list_name(call.body, None)
        if isinstance(name, Response):
            return name
        target = ContactList(str(uuid.uuid4()), name)
        self.sendgrid.lists[target.id] = target
        return json_response(self._list_view(call, target), 201)

    def get_lists(self, call: Call) -> Response:
        try:
            page_size = int(float(call.query.get("page_size", "100")))
            offset = int(call.query.get("page_token") or "0")
        except ValueError:
            return errors(400, "invalid page_size or page_token", "page_token")
        if not 1 <= page_size <= MAX_PAGE_SIZE or offset < 0:
            return errors(400, f"page_size must be between 1 and {MAX_PAGE_SIZE}", "page_size")
        lists = list(self.sendgrid.lists.values())
        here = call.url(f"/v3/marketing/lists?page_size={page_size}")
        metadata: dict[str, Any] = {
            "self": f"{here}&page_token={offset or ''}",
            "count": len(lists),
        }
        if offset + page_size < len(lists):
            metadata["next"] = f"{here}&page_token={offset + page_size}"
        if offset > 0:
            metadata["prev"] = f"{here}&page_token={max(0, offset - page_size) or ''}"
        return json_response(
            {
                "result": [
                    self._list_view(call, each) for each in lists[offset : offset + page_size]
                ],
                "_metadata": metadata,
            }
        )

    def _target(self, call: Call) -> ContactList | None:
        return self.sendgrid.lists.get(call.params["id"])

    def get_list(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, "list not found", "id")
        return json_response(self._list_view(call, target))

    def update_list(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, "list not found", "id")
        name = self._list_name(call.body, target)
        if isinstance(name, Response):
            return name
        target.name = name
        return json_response(self._list_view(call, target))

    def delete_list(self, call: Call) -> Response:
        target = self.sendgrid.lists.pop(call.params["id"], None)
        if target is None:
            return errors(404, "list not found", "id")
        for email in target.members:
            self.sendgrid.contacts[email].list_ids.discard(target.id)
        return no_content()

    def remove_from_list(self, call: Call) -> Response:
        target = self._target(call)
        if target is None:
            return errors(404, "list not found", "id")
        ids = [
            each.strip() for each in call.query.get("contact_ids", "").split(",") if each.strip()
        ]
        if not ids:
            return errors(400, "contact_ids is required", "contact_ids")
        unknown = [each for each in ids if each not in self.sendgrid.contacts_by_id]
        if unknown:
            return errors(404, f"contact ids not found: {', '.join(unknown[:10])}", "contact_ids")
        job = Job(str(uuid.uuid4()), "delete", len(ids))
        job.work = DelayedWork(
            self.sendgrid.job_delay, lambda: self._apply_removal(job, target, ids)
        )
        self.sendgrid.jobs[job.id] = job
        return json_response({"job_id": job.id}, 202)

    def _apply_removal(self, job: Job, target: ContactList, ids: list[str]) -> None:
        for contact_id in ids:
            contact = self.sendgrid.contacts_by_id[contact_id]
            message = self.sendgrid.rejection(contact.email)
            if message is not None:
                job.errors.append({"email": contact.email, "message": message})
                continue
            if contact.email in target.members:
                target.members.discard(contact.email)
                contact.list_ids.discard(target.id)
                job.deleted_count += 1
        job.finish()


def create_app(state: SendGridState | None = None) -> Starlette:
    """The fake SendGrid app; pass a state to inspect it or tune limits and job delay."""
    return build_app(SendGridFake(state or SendGridState()))
