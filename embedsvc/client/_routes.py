"""Every endpoint the client calls, with its method, path and whether repeating it is safe.

Idempotence is declared here, next to the path, and nowhere else: the retry policy reads it
from the route of each call. A call is idempotent when sending it twice leaves the server as
sending it once would (reads, searches, embedding, upserts by id, deletes by id); creating or
deleting a collection, compacting and deleting by filter are not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from embedsvc.client._errors import error_from_response, unreadable_answer
from embedsvc.responses import CollectionList, Job, JobList

T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {placeholders}, each filled with one quoted path segment
    idempotent: bool
    answers: frozenset[int] = frozenset()  # error statuses whose body is still the answer

    def call(self, parse: Callable[[Any], T], body: Any = None, **params: str) -> Call[T]:
        """A request to this route; ``parse`` turns the JSON answer into the result."""
        path = self.path.format(**{key: _segment(value) for key, value in params.items()})
        return Call(self, path, parse, body)


def _segment(value: str) -> str:
    """One path segment, quoted; "." and ".." too, which an HTTP client would otherwise
    resolve away (a document may be called "..")."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


@dataclass(frozen=True)
class Call(Generic[T]):
    route: Route
    path: str
    parse: Callable[[Any], T]
    body: Any = None

    def answer(self, response: httpx.Response) -> T:
        """The parsed result, or the exception the server's error answer stands for."""
        if response.is_error and response.status_code not in self.route.answers:
            raise error_from_response(response)
        try:
            return self.parse(response.json())
        except ValueError as exc:  # not JSON, or not the shape of the result (pydantic)
            if response.is_error:  # e.g. readyz's 503 from a proxy, not the server: an error
                raise error_from_response(response) from exc
            raise unreadable_answer(response, exc) from exc


HEALTHZ = Route("GET", "/healthz", idempotent=True)
READYZ = Route("GET", "/readyz", idempotent=True, answers=frozenset({503}))  # 503: not ready, same body
LIST_COLLECTIONS = Route("GET", "/v1/collections", idempotent=True)
GET_COLLECTION = Route("GET", "/v1/collections/{name}", idempotent=True)
CREATE_COLLECTION = Route("POST", "/v1/collections", idempotent=False)  # again: 409
DELETE_COLLECTION = Route("DELETE", "/v1/collections/{name}", idempotent=False)  # again: 404
SEARCH = Route("POST", "/v1/collections/{name}/search", idempotent=True)
UPSERT = Route("PUT", "/v1/collections/{name}/documents", idempotent=True)  # by id: same end state
DELETE_BY_IDS = Route("POST", "/v1/collections/{name}/documents/delete", idempotent=True)
DELETE_BY_FILTER = Route("POST", "/v1/collections/{name}/documents/delete",
                         idempotent=False)  # again: also deletes what matched since
GET_DOCUMENT = Route("GET", "/v1/collections/{name}/documents/{doc_id}", idempotent=True)
COMPACT = Route("POST", "/v1/collections/{name}/compact", idempotent=False)  # again: a second job
SNAPSHOT = Route("POST", "/v1/collections/{name}/snapshots", idempotent=False)  # again: a second file
LIST_JOBS = Route("GET", "/v1/jobs", idempotent=True)
GET_JOB = Route("GET", "/v1/jobs/{job_id}", idempotent=True)
EMBED = Route("POST", "/v1/embed", idempotent=True)


def collection_names(body: Any) -> list[str]:
    return CollectionList.model_validate(body).collections


def job_list(body: Any) -> list[Job]:
    return JobList.model_validate(body).jobs


def document_body(doc: Any) -> dict[str, Any]:
    """A document (a pydantic model or a mapping) as JSON: a ``vector`` of any sequence of
    numbers (a numpy array, say) as a list of floats."""
    body = doc.model_dump() if hasattr(doc, "model_dump") else dict(doc)
    if body.get("vector") is not None:
        body["vector"] = [float(x) for x in body["vector"]]
    return body
