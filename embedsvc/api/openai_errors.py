"""Errors in OpenAI's shape, for the OpenAI-compatible routes (``/v1/embeddings``, ``/v1/models``).

An OpenAI client reads ``{"error": {"message", "type", "param", "code"}}``; the rest of the
API keeps its own ``{"error": {"code", "message"}}``. Which paths answer in OpenAI's shape
is decided here, once, by :func:`is_openai_path`, for the pieces that answer before a
route runs (the body-size middleware, the 404 and 405 of routing) as well as for the
routes themselves (:mod:`embedsvc.api.routes.openai_compat`).

This module imports nothing else of the API, so those pieces can use it without a cycle.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import Field

from embedsvc.responses import Response

# The routes whose errors are in OpenAI's shape: /v1/embeddings and /v1/models[/{id}].
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"

# Codes OpenAI's clients know, for the refusals that have one; the others keep ours.
_OPENAI_CODES = {"unauthorized": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}


def is_openai_path(path: str) -> bool:
    return path in (EMBEDDINGS_PATH, MODELS_PATH) or path.startswith(MODELS_PATH + "/")


def error_type(status: int) -> str:
    """OpenAI's ``type`` for a status: ``requests`` for rate limits, ``server_error`` for 5xx,
    ``invalid_request_error`` for every other refusal (OpenAI's type for 400, 401 and 404)."""
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error_body(status: int, code: str | None, message: str,
                      param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param,
                      "code": _OPENAI_CODES.get(code or "", code)}}


def openai_error_response(status: int, code: str | None, message: str, param: str | None = None,
                          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(openai_error_body(status, code, message, param), status, headers=headers or None)


class OpenAIErrorBody(Response):
    message: str = Field(..., description="What is wrong and what to send instead.")
    type: str = Field(..., description="invalid_request_error, requests (rate limit) or server_error.")
    param: str | None = Field(..., description="The request field at fault, where one is.")
    code: str | None = Field(..., description="model_not_found, invalid_api_key, rate_limit_exceeded, "
                                              "or embedsvc's code (invalid_request, too_large, ...).")


class OpenAIErrorResponse(Response):
    error: OpenAIErrorBody
