"""OpenAI-compatible embeddings: ``POST /v1/embeddings``, ``GET /v1/models`` and
``GET /v1/models/{model}``, so that the official ``openai`` client, and what is built on it,
works against embedsvc with only its ``base_url`` and ``api_key`` changed.

What is OpenAI's here: the request (``model``, ``input`` as a string or a list of strings,
``encoding_format`` ``float`` or ``base64``, ``dimensions``, ``user``), the answers, and the
errors (``{"error": {"message", "type", "param", "code"}}``, :mod:`embedsvc.api.openai_errors`).
What is embedsvc's: the models (the ones ``/v1/embed`` serves, by the same names), the
vectors (``/v1/embed``'s, through the same encoder path: equal for the same texts and model),
the limits (the settings ``/v1/embed`` obeys) and the keys (``Authorization: Bearer``, which
is how an OpenAI client sends its ``api_key``).

Decisions where OpenAI and embedsvc differ:

- Token arrays (``input`` as lists of token ids) are refused: the ids a client makes are
  those of OpenAI's tokenizer (tiktoken), which mean nothing to our models' tokenizers.
- ``dimensions`` is refused unless it is the model's own size: our models were not trained
  to be cut (Matryoshka), so a shortened vector would be a worse one, silently.
- A text longer than the model's window is cut to it, as ``/v1/embed`` cuts it (OpenAI
  refuses it instead), and ``usage.prompt_tokens`` counts the tokens the model saw: each
  text's tokens by the model's own tokenizer, cut to the window, with its special tokens
  (``[CLS]`` and ``[SEP]``), i.e. at most ``max_seq_length`` (256 for the default model) a text.
- Invalid requests are 400, as OpenAI answers them (the rest of the API answers 422).
"""

from __future__ import annotations

import base64
import calendar
import inspect
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi import Response as HttpResponse
from fastapi.exceptions import RequestValidationError
from pydantic import ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool

from embedsvc.api import checks
from embedsvc.api.deps import ServiceDep, SettingsDep
from embedsvc.api.errors import ApiError
from embedsvc.api.limits import JsonRoute
from embedsvc.api.openai_errors import OpenAIErrorResponse, openai_error_response
from embedsvc.api.routes._json import json_response, model_response
from embedsvc.api.routes.embed import _LOAD_WAIT
from embedsvc.api.schemas import Request as StrictRequest
from embedsvc.api.schemas import limit
from embedsvc.collection import CollectionError
from embedsvc.encoders import DEFAULT_MODEL, Encoder, is_named_model
from embedsvc.metrics import EMBEDDED_TEXTS
from embedsvc.responses import Response
from embedsvc.service import Service
from embedsvc.settings import Settings

log = logging.getLogger(__name__)

# Headers of our error answers that an OpenAI-shaped one keeps.
_KEPT_HEADERS = ("retry-after", "www-authenticate", "allow")


# --- requests and answers ------------------------------------------------------------------

Text = Annotated[str, Field(json_schema_extra=limit(maxLength="max_query_chars"))]


class OpenAIEmbeddingsRequest(StrictRequest):
    """OpenAI's embeddings request. Unknown fields are refused, as OpenAI refuses them
    ("Unrecognized request argument"); the official client sends none."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": DEFAULT_MODEL, "input": ["vitamin D deficiency", "bone density"]}]})

    model: str = Field(..., description="A model of GET /v1/models: the default model "
                                        f"({DEFAULT_MODEL} unless EMBEDSVC_DEFAULT_MODEL says "
                                        "otherwise) or a registered version (name/vNNNN).")
    input: Text | Annotated[list[Text], Field(min_length=1, json_schema_extra=limit(maxItems="max_embed_texts"))] = \
        Field(..., description="A text, or a list of at most EMBEDSVC_MAX_EMBED_TEXTS texts, each of "
                               "at most EMBEDSVC_MAX_QUERY_CHARS characters. Token arrays are refused. "
                               "Texts longer than the model's window are cut to it.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: arrays of numbers; base64: the little-endian float32 bytes of "
                             "each vector, base64-encoded (what the openai client asks for by default, "
                             "and decodes itself).")
    dimensions: int | None = Field(None, ge=1, description="Must be the model's own size if given: "
                                                           "its vectors cannot be shortened.")
    user: str | None = Field(None, description="Accepted for compatibility, and ignored.")

    @field_validator("input", mode="before")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        """One clear refusal for token arrays, and for an input that is no text at all."""
        if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
            raise PydanticCustomError(
                "token_arrays", "token arrays are not supported: their ids are those of OpenAI's "
                                "tokenizer, not this model's; send the texts as strings (LangChain: "
                                "OpenAIEmbeddings(check_embedding_ctx_length=False))")
        if isinstance(value, list) and not value:
            raise PydanticCustomError("empty_input", "an empty list: send at least one text")
        if not isinstance(value, str | list):
            raise PydanticCustomError("input_type", "send a string or a list of strings")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class OpenAIEmbedding(Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(..., description="The unit vector; a base64 string with "
                                                          "encoding_format=base64.")


class OpenAIUsage(Response):
    prompt_tokens: int = Field(..., description="Tokens the model saw: each text's own tokens cut "
                                                "to the model's window, with its special tokens.")
    total_tokens: int


class OpenAIEmbeddingList(Response):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(Response):
    id: str = Field(..., description="What to send as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(..., description="When a registered version was registered (Unix time); "
                                          "0 for the bundled default model.")
    owned_by: str


class OpenAIModelList(Response):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


# --- errors in OpenAI's shape --------------------------------------------------------------

class Refused(ApiError):
    """A refusal of these routes, naming the request field at fault."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(status, code, message)
        self.param = param


_DESCRIPTIONS = {
    400: "Invalid request: not JSON, the wrong shape, token arrays, over a limit of the settings, "
         "or `dimensions` other than the model's.",
    401: "No API key, or one that is not valid (`invalid_api_key`).",
    403: "The key's scope does not allow this call.",
    404: "No such model (`model_not_found`); the message names those available.",
    413: "The body is over EMBEDSVC_MAX_BODY_BYTES (`too_large`).",
    415: "The body is not sent as `application/json`.",
    422: "Text that is not valid Unicode (a lone surrogate).",
    429: "Over the key's rate limit (`rate_limit_exceeded`); see Retry-After.",
    503: "The model is loading or failed to load; retry after `Retry-After` seconds.",
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, all in OpenAI's shape (these override the app's
    declarations of 401, 403 and 429 in our shape)."""
    return {status: {"model": OpenAIErrorResponse, "description": _DESCRIPTIONS[status]}
            for status in sorted({401, 403, 429, *statuses})}


def _app_handler(app: FastAPI, exc: Exception) -> Callable[..., Any]:
    for kind in type(exc).__mro__:
        if kind in app.exception_handlers:
            return app.exception_handlers[kind]
    raise exc  # not reached: errors.install handles Exception


async def openai_error(request: Request, exc: Exception) -> HttpResponse:
    """``exc`` answered as the rest of the API answers it (status, code, message, headers:
    :mod:`embedsvc.api.errors` and the auth refusals map exceptions in one place), then
    written in OpenAI's shape. Schema errors become 400, as OpenAI answers them, naming
    the field at fault in ``param``."""
    answer = _app_handler(request.app, exc)(request, exc)
    if inspect.isawaitable(answer):
        answer = await answer
    error = json.loads(bytes(answer.body))["error"]
    status, param = answer.status_code, getattr(exc, "param", None)
    if isinstance(exc, RequestValidationError):
        status = 400
        where = [p for p in (exc.errors() or [{}])[0].get("loc", ()) if p != "body"]
        param = str(where[0]) if where else None
    headers = {k: v for k, v in answer.headers.items() if k.lower() in _KEPT_HEADERS}
    return openai_error_response(status, error.get("code"), error.get("message", ""), param, headers)


class OpenAIRoute(JsonRoute):
    """A :class:`JsonRoute` (key checked before the body is read, the body checked as JSON)
    whose every refusal is in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, HttpResponse]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> HttpResponse:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - each is answered as errors.py maps it
                return await openai_error(request, exc)

        return handle


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


# --- which models ---------------------------------------------------------------------------

def _collection_models(service: Service) -> set[str]:
    models = set()
    for name in service.collections():
        try:
            models.add(service.store(name).get_meta("model_id"))
        except CollectionError:
            continue  # deleted since it was listed
    return {m for m in models if m}


def catalogue(service: Service, settings: Settings) -> dict[str, OpenAIModel]:
    """The models a client may name: the default model, every registered version, and the
    named models of collections; never a folder path (a default model or collection model
    given as a path is served, as by /v1/embed, to a client that names it, but not listed)."""
    from training.registry import list_versions

    found: dict[str, OpenAIModel] = {}
    if is_named_model(settings.default_model, settings.models_dir):
        owner = "sentence-transformers" if settings.default_model == DEFAULT_MODEL else "embedsvc"
        found[settings.default_model] = OpenAIModel(id=settings.default_model, created=0, owned_by=owner)
    for version in list_versions(settings.models_dir):
        found[version.ref] = OpenAIModel(id=version.ref, created=_registered_at(version.card), owned_by="embedsvc")
    for name in sorted(_collection_models(service) - set(found)):
        if is_named_model(name, settings.models_dir):
            found[name] = OpenAIModel(id=name, created=0, owned_by="embedsvc")
    return found


def _registered_at(card: dict[str, Any]) -> int:
    try:
        return calendar.timegm(time.strptime(str(card.get("registered_at")), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return 0


def servable(name: str, service: Service, settings: Settings) -> bool:
    """Whether the server embeds with ``name``: what /v1/embed accepts (the default model, a
    model loaded or used by a collection) and any registered version. Never a folder the
    client chooses: a name that is not one of these is refused before anything is read."""
    return (name == settings.default_model or is_named_model(name, settings.models_dir)
            or name in service.models.status() or name in _collection_models(service))


def _not_found(name: str, service: Service, settings: Settings) -> Refused:
    known = list(catalogue(service, settings))
    shown = ", ".join(f"'{m}'" for m in known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    return Refused(404, "model_not_found", f"The model '{name[:200]}' does not exist on this server; "
                                           f"use one of {shown or 'none'} (GET /v1/models lists them)", "model")


# --- routes ---------------------------------------------------------------------------------

@router.post("/embeddings", operation_id="openai_embeddings", response_model=OpenAIEmbeddingList,
             responses=_responses(400, 404, 413, 415, 422, 503))
async def create_embeddings(body: OpenAIEmbeddingsRequest, service: ServiceDep,
                            settings: SettingsDep) -> HttpResponse:
    """Embeddings as OpenAI's API answers them; the vectors are /v1/embed's."""
    texts = body.texts
    try:
        checks.text_limits(texts, "input", settings)
    except ApiError as exc:  # OpenAI answers an invalid request with 400
        raise Refused(400, exc.code, exc.message, "input") from exc
    answer = await run_in_threadpool(_embeddings, service, settings, body)
    EMBEDDED_TEXTS.inc(len(texts))
    return answer


def _embeddings(service: Service, settings: Settings, body: OpenAIEmbeddingsRequest) -> HttpResponse:
    """Check the model, wait for it, encode and write the body, in one trip to the thread
    pool; encoded as /v1/embed encodes (shared encoder calls, no query cache)."""
    if not servable(body.model, service, settings):
        raise _not_found(body.model, service, settings)
    encoder = service.models.wait(body.model, _LOAD_WAIT)
    if body.dimensions is not None and body.dimensions != encoder.dim:
        raise Refused(400, "invalid_request",
                      f"dimensions: {body.dimensions} asked, but the model '{body.model}' makes "
                      f"{encoder.dim}-dimensional vectors and cannot shorten them (it was not trained "
                      f"to be truncated); omit dimensions or send {encoder.dim}", "dimensions")
    texts = body.texts
    vectors = service.queries.encode(encoder, texts, cache=False)  # (len(texts), dim) float32
    tokens = prompt_tokens(encoder, texts)
    encode = _base64 if body.encoding_format == "base64" else (lambda row: row)
    data = [{"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(vectors)]
    # the fields of OpenAIEmbeddingList, the vectors written straight from the float32 array
    return json_response({"object": "list", "data": data, "model": body.model,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _base64(row: np.ndarray) -> str:
    """OpenAI's base64 format: the vector's float32 bytes, little-endian."""
    return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")


def prompt_tokens(encoder: Encoder, texts: list[str]) -> int:
    """Tokens the model sees for ``texts``: each text's, cut to the window as the encoder
    cuts it, plus the special tokens around it; padding not counted."""
    return sum(len(ids) for ids in encoder.token_ids(texts)) + encoder.special_tokens * len(texts)


@router.get("/models", operation_id="openai_list_models", response_model=OpenAIModelList,
            responses=_responses())
def list_models(service: ServiceDep, settings: SettingsDep) -> HttpResponse:
    """The models this server embeds with, by the names `model` takes."""
    return model_response(OpenAIModelList(data=list(catalogue(service, settings).values())))


@router.get("/models/{model:path}", operation_id="openai_retrieve_model", response_model=OpenAIModel,
            responses=_responses(404, 422))
def retrieve_model(model: str, service: ServiceDep, settings: SettingsDep) -> HttpResponse:
    """One model, as the list gives it (404 ``model_not_found`` if the server has no such model)."""
    known = catalogue(service, settings)
    if model in known:
        return model_response(known[model])
    if not servable(model, service, settings):
        raise _not_found(model, service, settings)
    return model_response(OpenAIModel(id=model, created=0, owned_by="embedsvc"))
