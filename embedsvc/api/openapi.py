"""The OpenAPI schema as this server enforces it, and API docs that work without internet.

The request models cannot know the limits of a server's settings (EMBEDSVC_MAX_K, ...), so
fields carry markers (:func:`embedsvc.api.schemas.limit`) that :func:`state_limits`
replaces, once per app, with the values in force. The same pass writes the collection-name
rule on the ``{name}`` path parameter and spells out the metadata filter grammar, so a
client (or a fuzzer) reading the schema knows exactly which requests are accepted.

``/docs`` is Swagger UI served from the ``swagger-ui-bundle-v2`` package (FastAPI's own page
loads its script and style from a CDN, and is blank on a machine without internet). Its
validator badge, which sends the schema's URL to swagger.io, is turned off. ReDoc ships in
no package, so ``/redoc`` is off.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from embedsvc.collection import NAME_PATTERN, NAME_RULE
from embedsvc.search.filters import FIELD
from embedsvc.settings import Settings

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
# Integers a filter may compare with (SQLite's 64 bits).
_INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}


def install(app: FastAPI, settings: Settings) -> None:
    """Serve ``/docs`` from the package and make ``/openapi.json`` state the limits of ``settings``.

    The app must be made with ``docs_url=None, redoc_url=None``."""
    serve_docs(app)
    generate = app.openapi  # FastAPI's, or one another module installed before
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "schema" not in cache:
            cache["schema"] = state_limits(copy.deepcopy(generate()), settings)
        app.openapi_schema = cache["schema"]
        return cache["schema"]

    app.openapi = openapi  # type: ignore[method-assign]


def serve_docs(app: FastAPI) -> None:
    app.mount(ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})


def state_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``schema`` with every marker replaced by what ``settings`` enforce (changed in place)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(filter_components(settings.max_filter_depth))
    for node in _nodes(schema):
        if "x-limit" in node:
            _apply_limits(node, node.pop("x-limit"), settings)
        if node.pop("x-filter", False):
            _use_filter(node)
    for parameter in _parameters(schema):
        if parameter.get("in") == "path" and parameter.get("name") == "name":
            parameter["schema"]["pattern"] = f"^{NAME_PATTERN}$"
            parameter["description"] = f"Collection name: {NAME_RULE}."
    return schema


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every object in the schema document (the generated schema is shallow: recursion is fine)."""
    if isinstance(value, dict):
        yield value
        for child in list(value.values()):
            yield from _nodes(child)
    elif isinstance(value, list):
        for child in value:
            yield from _nodes(child)


def _parameters(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            yield from operation.get("parameters", []) if isinstance(operation, dict) else []


def _apply_limits(node: dict[str, Any], keywords: dict[str, str], settings: Settings) -> None:
    """Set each keyword to its setting's value; on a nullable field (``anyOf`` of the type
    and null) that is the non-null branch."""
    targets = [branch for branch in node.get("anyOf", []) if branch.get("type") != "null"] or [node]
    for keyword, setting in keywords.items():
        for target in targets:
            target[keyword] = getattr(settings, setting)
    node.setdefault("x-settings", {}).update(
        {keyword: f"EMBEDSVC_{setting.upper()}" for keyword, setting in keywords.items()})


def _use_filter(node: dict[str, Any]) -> None:
    ref = {"$ref": "#/components/schemas/Filter"}
    if "anyOf" in node:
        node["anyOf"] = [ref if branch.get("type") == "object" else branch for branch in node["anyOf"]]
    else:
        node.pop("type", None)
        node.pop("additionalProperties", None)
        node.update(ref)


def filter_components(max_depth: int) -> dict[str, Any]:
    """The filter grammar of :mod:`embedsvc.search.filters` as JSON Schema.

    ``Filter`` is level 0; ``$and``/``$or`` lists hold the next level, and the last level
    (EMBEDSVC_MAX_FILTER_DEPTH) has none, which states the depth limit. The limit on the
    number of conditions (EMBEDSVC_MAX_FILTER_CONDITIONS) is a count over the whole tree
    that JSON Schema cannot state: the server refuses such a filter with a 422.
    """
    number = {"type": "number", **_INT64}
    comparable = {"anyOf": [{"type": "string"}, number]}
    scalar = {"anyOf": [{"type": "string"}, {"type": "boolean"}, number]}
    operators = {"$eq": scalar, "$ne": scalar, "$gt": comparable, "$gte": comparable,
                 "$lt": comparable, "$lte": comparable,
                 "$in": {"type": "array", "items": comparable}, "$nin": {"type": "array", "items": comparable}}
    field = FIELD.pattern
    components: dict[str, Any] = {
        "FilterCondition": {
            "description": "A value the field must equal, or operators on the field.",
            "anyOf": [scalar, {"type": "object", "minProperties": 1, "properties": operators,
                               "additionalProperties": False}]},
    }
    for level in range(max_depth + 1):
        name = "Filter" if level == 0 else f"FilterLevel{level}"
        nested = level < max_depth
        logical = {"type": "array", "minItems": 1,
                   "items": {"$ref": f"#/components/schemas/FilterLevel{level + 1}"}}
        components[name] = {
            "type": "object",
            "description": "Field conditions side by side are ANDed; $and/$or combine filters.",
            "propertyNames": {"pattern": f"^(\\$and|\\$or|{field})$" if nested else f"^{field}$"},
            "properties": {"$and": logical, "$or": logical} if nested else {},
            "additionalProperties": {"$ref": "#/components/schemas/FilterCondition"},
        }
    return components
