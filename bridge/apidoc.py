"""What a route says about itself, declared once on its view with `@documented(...)`; `bridge.openapi`
builds the OpenAPI document from the app's routes and these declarations.

A route's answer is a marshmallow schema, and the view answers `Schema().dump(...)` of that same class:
the schema is the one declaration of the shape, so the document cannot drift from what is served.
How a route is authenticated is read from its `bridge.apps.auth.require_token`, not declared again here;
the errors its token and its body can cause are added from those, too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from marshmallow import Schema

if TYPE_CHECKING:
    from bridge.settings import Settings

# A bound, as a number or read from the settings (which the document is built with).
Limit = int | Callable[["Settings"], int]


@dataclass(frozen=True)
class Body:
    """A JSON request body of `schema`, at most `max_bytes` long: one object, or with `max_items` also an
    array of 1 to `max_items` of them. With `dotted_keys`, an object may also be written flat, its nested
    fields under dotted keys (`bridge.validation.unflattened`)."""

    schema: type[Schema]
    max_bytes: Limit
    max_items: Limit | None = None
    dotted_keys: bool = False


@dataclass(frozen=True)
class Operation:
    """One route's documentation. `answer` is the schema of its `status` answer (or a JSON Schema dict),
    also served as each of `media_types` other than JSON (a CSV export, say: documented as text);
    `errors` are the statuses, besides those its token and body bring, that it answers in the one
    error shape (`bridge.errors.ErrorSchema`); `unavailable` is the schema of a 503 with a shape of its
    own (the health report). `path` must name every variable of the route's URL."""

    summary: str
    answer: type[Schema] | dict
    status: int = 200
    errors: tuple[int, ...] = ()
    path: tuple[dict, ...] = ()
    query: tuple[dict, ...] = ()
    body: Body | None = None
    media_types: tuple[str, ...] = ("application/json",)
    unavailable: type[Schema] | None = None


def documented(summary: str, *, answer: type[Schema] | dict, status: int = 200, errors: tuple[int, ...] = (),
               path: tuple[dict, ...] = (), query: tuple[dict, ...] = (), body: Body | None = None,
               media_types: tuple[str, ...] = ("application/json",),
               unavailable: type[Schema] | None = None) -> Callable:
    """Decorate a view with its documentation (`Operation`); the view is returned unchanged. Put it under
    the route decorator: `@bp.get(...)`, `@documented(...)`, then `@require_token(...)`."""
    operation = Operation(summary, answer, status, tuple(errors), tuple(path), tuple(query), body,
                          tuple(media_types), unavailable)

    def decorate(view: Callable) -> Callable:
        view.api_operation = operation  # type: ignore[attr-defined]
        return view

    return decorate


def operation_of(view: Callable) -> Operation | None:
    """The documentation `@documented` put on `view`, or None for a view without."""
    return getattr(view, "api_operation", None)


def path_parameter(name: str, max_length: int) -> dict:
    """A variable of the URL path: a string of at most `max_length` characters."""
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string", "maxLength": max_length}}


def query_parameter(name: str, schema: dict, description: str = "") -> dict:
    """An optional query-string argument of JSON Schema `schema`."""
    parameter = {"in": "query", "name": name, "required": False, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


APP_ID = path_parameter("app_id", 36)  # every /v1/apps/<app_id>/... route


def pages_for_people(blueprint):
    """Mark `blueprint`'s routes as HTML pages (the operator dashboard), not part of the API: the OpenAPI
    document leaves them out, and they need no `@documented`. Returns `blueprint`."""
    blueprint.pages_for_people = True
    return blueprint


def is_pages_for_people(blueprint) -> bool:
    return getattr(blueprint, "pages_for_people", False)
