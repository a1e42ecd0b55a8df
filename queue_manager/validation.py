"""Request validation answering 422 as FastAPI does, {"detail": [{"type", "loc", "msg", ...}]}, minus the
`input` FastAPI echoes (a request is never sent back); and strict JSON, refused with a 400 naming the field."""

from __future__ import annotations

import email.message
import json
import math
import re
from collections import Counter
from typing import Any, TypeVar

from multidict import MultiMapping
from pydantic import BaseModel, ValidationError

from common.json_depth import MAX_JSON_DEPTH, deeper_than
from common.text import encodes_as_utf8

ValidationErrors = list[dict[str, Any]]
M = TypeVar("M", bound=BaseModel)

# A 5000-node workflow has ~100 000 values. Each parsed value costs ~150 bytes of memory against its 2-3 bytes of
# text ("{}," parses to a dict): unbounded, a 50 MB body of them peaked at 2.4 GB while parsed.
MAX_JSON_VALUES = 1_000_000
# 2**64 - 1 (ComfyUI's largest seed) has 20 digits. Python refuses ints over 4300 digits with a ValueError.
MAX_INT_DIGITS = 20
# A lone surrogate arrives escaped (\ud800) or as raw bytes json.loads lets through ("surrogatepass"): UTF-8 never
# holds ED A0..ED BF, and a UTF-16/32 body may hold anything, so such a body has its strings checked.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"\s*:|"(?:[^"\\]|\\.)*"|[\[\]{}]')
# How much of each key a field path names: a request is never sent back (a 5 MB key made a 5 MB answer).
MAX_KEY_CHARS_NAMED = 40


class RefusedJson(Exception):
    """The body is JSON only by Python's lenient reading: NaN, Infinity, 1e999, huge ints, deep nesting, a key
    given twice in one object."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        self.field = ".".join(_named(part) for part in path) or "body"
        super().__init__(f"{self.field}: {reason}")


def _named(key: str | int) -> str:
    """A key as a field path names it: cut short, and a lone surrogate escaped (no answer can encode it: a 500)."""
    text = str(key)
    text = text if len(text) <= MAX_KEY_CHARS_NAMED else text[:MAX_KEY_CHARS_NAMED] + "…"
    return text.encode(errors="backslashreplace").decode()


class _Refused:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not allowed (strict JSON)")


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"number {text[:30]} is out of range")


def _int(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Refused(f"integer of {digits} digits is out of range (at most {MAX_INT_DIGITS})")
    return int(text)


def strict_json_loads(raw: bytes | bytearray) -> Any:
    """json.loads that refuses what other JSON parsers (and our own responses) cannot represent.

    Raises RefusedJson naming the field; json.JSONDecodeError / UnicodeDecodeError for text that is not JSON.
    The common case (nothing refused) costs one pass over the containers; paths are only built to name a field.
    """
    # Every value after a container's first follows a comma: an upper bound, counted before anything is built.
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1 > MAX_JSON_VALUES:
        raise RefusedJson((), f"more than {MAX_JSON_VALUES} JSON values (items, keys, arrays, objects)")
    refused = []

    def mark(value: Any) -> Any:
        if isinstance(value, _Refused):
            refused.append(value)
        return value

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json.loads keeps the last of a key given twice; a proxy or validator before us may read the first.
        value = dict(pairs)
        if len(value) < len(pairs):
            for key, times in Counter(key for key, _ in pairs).items():
                if times > 1:
                    value[key] = mark(_Refused(f"given {times} times in one object (strict JSON): send it once"))
        return value

    try:
        value = json.loads(
            raw,
            object_pairs_hook=unique_keys,
            parse_constant=lambda name: mark(_constant(name)),
            parse_float=lambda text: mark(_float(text)),
            parse_int=lambda text: mark(_int(text)),
        )
    except RecursionError:
        raise RefusedJson(_too_deep_at(raw), f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    check_strings = _SURROGATE.search(raw) is not None or json.detect_encoding(raw) not in ("utf-8", "utf-8-sig")
    if refused or check_strings or deeper_than(value):
        _locate_refusal(value, check_strings)
    return value


def _locate_refusal(value: Any, check_strings: bool) -> None:
    """Raise RefusedJson for the first refused value found, with its path."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Refused):
            raise RefusedJson(path, item.reason)
        if isinstance(item, dict | list):
            if len(path) >= MAX_JSON_DEPTH:
                raise RefusedJson(path, f"nested deeper than {MAX_JSON_DEPTH} levels")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if check_strings and isinstance(key, str) and not encodes_as_utf8(key):
                    raise RefusedJson(path, "a key holds a lone UTF-16 surrogate (not valid Unicode)")
                stack.append((child, (*path, key)))
        elif check_strings and isinstance(item, str) and not encodes_as_utf8(item):
            raise RefusedJson(path, "a lone UTF-16 surrogate is not valid Unicode")


def _too_deep_at(raw: bytes | bytearray) -> tuple[str | int, ...]:
    """The keys leading to where nesting passes MAX_JSON_DEPTH (array levels shown as 0)."""
    path: list[str | int] = []
    pending_key: str | int = 0
    for token in _JSON_TOKEN.finditer(raw):
        text = token.group()
        if text in (b"{", b"["):
            path.append(pending_key)
            if len(path) > MAX_JSON_DEPTH:
                break
            pending_key = 0
        elif text in (b"}", b"]"):
            if path:
                path.pop()
        elif text.endswith(b":"):
            pending_key = json.loads(text.rstrip(b": \t\r\n"))
    return tuple(path[1:])


def parse_query(model: type[M], params: MultiMapping[str]) -> tuple[M | None, ValidationErrors]:
    # Given twice, which counts? aiohttp reads the first, FastAPI the last: a fence or a job id is never a guess.
    given = {name: len(params.getall(name, ())) for name in model.model_fields}
    repeated = [name for name, times in given.items() if times > 1]
    if repeated:
        return None, [
            {"type": "repeated", "loc": ["query", name], "msg": f"given {given[name]} times; send it once"}
            for name in repeated
        ]
    try:
        return model.model_validate(dict(params)), []
    except ValidationError as exc:
        return None, _fastapi_errors(exc, "query")


def parse_json_body(
    model: type[M], raw: bytes | bytearray, content_type: str | None
) -> tuple[M | None, ValidationErrors]:
    """The body is JSON-decoded only when its content type is JSON (or absent), like FastAPI; otherwise it is
    refused with FastAPI's status, 422, naming the header. An empty body is a missing body.
    Raises RefusedJson for JSON that is not strict (see strict_json_loads)."""
    if not raw:
        return None, [{"type": "missing", "loc": ["body"], "msg": "Field required"}]
    if not _is_json(content_type):
        # FastAPI validates the raw text against the model: a 422 that names no header. Same status, clear words.
        return None, [{
            "type": "content_type",
            "loc": ["header", "content-type"],
            "msg": f"Content-Type is {_media_type(content_type)!r}, not JSON: send the body as JSON with "
                   f"Content-Type: application/json",
        }]  # fmt: skip
    try:
        body = strict_json_loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        position = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.reason
        msg = "JSON decode error"
        if not content_type:
            msg += " (the request has no Content-Type header, so its body was read as JSON: send the body as JSON"
            msg += " with Content-Type: application/json)"
        return None, [{"type": "json_invalid", "loc": ["body", position], "msg": msg, "ctx": {"error": reason}}]
    try:
        # FastAPI validates bodies with from_attributes=True, which decides the error for non-objects.
        return model.model_validate(body, from_attributes=True), []
    except ValidationError as exc:
        return None, _fastapi_errors(exc, "body")


def _media_type(content_type: str) -> str:
    """The header's type/subtype, printable ASCII only: its parameters are the client's (a request is never
    echoed), and a byte that is not UTF-8 would fail the answer's encoding."""
    media_type = content_type.partition(";")[0].strip()[:100]
    return "".join(char if " " <= char <= "~" else "?" for char in media_type)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _fastapi_errors(exc: ValidationError, source: str) -> ValidationErrors:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        shaped = {**error, "loc": [source, *error["loc"]]}
        if "ctx" in error:
            # FastAPI's jsonable_encoder turns the exception a validator raised into {}.
            shaped["ctx"] = {k: {} if isinstance(v, Exception) else v for k, v in error["ctx"].items()}
        errors.append(shaped)
    return errors
