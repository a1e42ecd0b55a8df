"""Request validation answering 422 exactly as FastAPI does: {"detail": [{"type", "loc", "msg", "input", ...}]}."""

from __future__ import annotations

import email.message
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ValidationErrors = list[dict[str, Any]]
M = TypeVar("M", bound=BaseModel)


def parse_query(model: type[M], params: Mapping[str, str]) -> tuple[M | None, ValidationErrors]:
    """Query params go in one at a time in FastAPI, so a missing one reports `input: null`."""
    try:
        return model.model_validate(dict(params)), []
    except ValidationError as exc:
        errors = _fastapi_errors(exc, "query")
        for error in errors:
            if error["type"] == "missing":
                error["input"] = None
        return None, errors


def parse_json_body(model: type[M], raw: bytes, content_type: str | None) -> tuple[M | None, ValidationErrors]:
    """The body is JSON-decoded only when its content type is JSON (or absent), like FastAPI; otherwise the
    raw text meets the model and fails its shape check. An empty body is a missing body."""
    if not raw:
        return None, [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
    body: Any = raw.decode("utf-8", errors="replace")
    if _is_json(content_type):
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            position = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.reason
            error = {"type": "json_invalid", "loc": ["body", position], "msg": "JSON decode error"}
            return None, [{**error, "input": {}, "ctx": {"error": reason}}]
    try:
        # FastAPI validates bodies with from_attributes=True, which decides the error for non-objects.
        return model.model_validate(body, from_attributes=True), []
    except ValidationError as exc:
        return None, _fastapi_errors(exc, "body")


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _fastapi_errors(exc: ValidationError, source: str) -> ValidationErrors:
    errors = []
    for error in exc.errors(include_url=False):
        shaped = {**error, "loc": [source, *error["loc"]]}
        if "ctx" in error:
            # FastAPI's jsonable_encoder turns the exception a validator raised into {}.
            shaped["ctx"] = {k: {} if isinstance(v, Exception) else v for k, v in error["ctx"].items()}
        errors.append(shaped)
    return errors
