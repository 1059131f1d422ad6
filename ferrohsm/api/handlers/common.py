"""What every handler needs: strict JSON bodies, base64 fields, query parameters.

Handlers stay thin: parse, call the service, return (status, dict). Anything malformed raises
BadRequest here, so no handler ever sees a field it did not declare.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...domain.errors import BadRequest
from ...domain.model import RequestContext
from ...domain.strictjson import has_surrogate, may_hold_surrogates
from .. import transit
from ..http import Request, Response

Reply = tuple[int, dict[str, Any]] | Response
Handler = Callable[[RequestContext, Request, dict[str, str]], Reply]
MISSING = object()


class _Duplicated(dict):  # type: ignore[type-arg]
    """An object that repeated a member name (``name``, the first repeated): refused, as a
    whole body or, as a batch item, as that item's own error (``check_fields``)."""

    name = ""


class _Seen(threading.local):
    """How many objects with a repeated member this thread's decoder made (per thread: a count
    shared by threads could lose an increment and let a body's duplicate pass unseen)."""

    n = 0


_seen = _Seen()


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen = dict(pairs)  # in C; a shorter dict means a name repeated
    if len(seen) == len(pairs):
        return seen
    marked = _Duplicated()
    for name, value in pairs:
        if name in marked and not marked.name:
            marked.name = name
        marked[name] = value
    _seen.n += 1
    return marked


def _duplicate_error(name: str) -> BadRequest:
    return BadRequest(f"duplicate JSON member {name[:40]!a}")


def refuse_duplicated(value: Any) -> None:
    """A batch item that repeated a member name (anywhere in it) is refused as that item."""
    if isinstance(value, _Duplicated):
        raise _duplicate_error(value.name)


def _first_duplicate(value: Any) -> str | None:
    """The name the first object in ``value`` repeated, None when none did."""
    if isinstance(value, _Duplicated):
        return value.name
    members = value.values() if isinstance(value, dict) else value if isinstance(
        value, list) else ()
    for member in members:
        name = _first_duplicate(member)
        if name is not None:
            return name
    return None


def _mark_items(items: list[Any]) -> None:
    """Batch items holding a repeated member name anywhere become _Duplicated: each is refused
    as that item's own error (``check_fields``), the others are served."""
    for index, item in enumerate(items):
        if isinstance(item, dict) and not isinstance(item, _Duplicated):
            name = _first_duplicate(item)
            if name is not None:
                marked = _Duplicated(item)
                marked.name = name
                items[index] = marked


def _refuse_body_duplicates(body: dict[str, Any], items: str) -> None:
    """``items``: the member whose elements are batch items on this route."""
    refuse_duplicated(body)
    for member_name, member in body.items():
        if member_name == items and isinstance(member, list):
            _mark_items(member)  # an item that is no object is refused as such, on its own
            continue
        name = _first_duplicate(member)
        if name is not None:
            raise _duplicate_error(name)


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not valid JSON")


class _Inexact(float):
    """A number written with a fraction that a float rounds to an integer
    (0.99999999999999999999): not the integer 1, so never taken where an int is wanted
    (``check_fields`` converts only an exact float such as 1.0)."""


def _parse_float(literal: str) -> float:
    value = float(literal)
    if value.is_integer() and decimal.Decimal(literal) != decimal.Decimal(int(value)):
        return _Inexact(value)
    return value


# Built once: json.loads(text, **options) builds a new decoder on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant,
                            parse_float=_parse_float)
_JSON_SPACE = " \t\n\r"  # json.decoder.WHITESPACE: the only whitespace JSON allows


def _decode_json(text: str) -> Any:
    """``json.loads(text, ...)`` exactly (same values, ValueError for the same inputs), minus
    the two whitespace regex matches ``JSONDecoder.decode`` spends half its time on."""
    if text.startswith("\ufeff"):  # what json.loads refuses before decoding
        raise ValueError("unexpected UTF-8 BOM")
    text = text.lstrip(_JSON_SPACE)
    value, end = _DECODER.raw_decode(text)
    if end != len(text) and text[end:].lstrip(_JSON_SPACE):
        raise ValueError("extra data after the JSON value")
    return value


def _not_json(exc: ValueError) -> BadRequest:
    """The refusal of a body the decoder raised ``exc`` for, saying where it went wrong (a
    JSONDecodeError's msg is fixed text: it never quotes the body)."""
    if "integer string conversion" in str(exc):  # valid JSON, beyond int()'s digit limit
        return BadRequest("request body holds a number with too many digits")
    if isinstance(exc, json.JSONDecodeError):
        return BadRequest(f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, "
                          f"column {exc.colno})")
    return BadRequest("request body is not valid UTF-8 JSON")


def json_body(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    duplicates = _seen.n
    try:
        text = req.body.decode("utf-8")
        value = _decode_json(text)
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8 JSON") from None
    except ValueError as exc:
        raise _not_json(exc) from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    if _seen.n != duplicates:
        try:
            # Vault's batches are batch_input; on a Vault route "batch" is just ignored
            _refuse_body_duplicates(value, "batch_input" if req.path.startswith(transit.PREFIX)
                                    else "batch")
        except RecursionError:
            raise BadRequest("request body is nested too deeply") from None
    if may_hold_surrogates(text) and has_surrogate(value):
        # A lone surrogate (\\udfff) is valid JSON syntax but no Unicode text: no response,
        # audit record or log line could carry it as UTF-8, so it never gets past here.
        raise BadRequest("request body holds a string that is not valid Unicode "
                         "(a lone surrogate escape)")
    return value


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = False


def _takes_bool(kind: type | tuple[type, ...]) -> bool:
    return bool in kind if isinstance(kind, tuple) else kind is bool


def _takes_int(kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return int in kinds and float not in kinds


def fields(req: Request, spec: dict[str, Field]) -> dict[str, Any]:
    """The body's members, type-checked against ``spec``; unknown members are an error.

    Handlers pass specs built once at registration, not per request."""
    return check_fields(json_body(req), spec)


def check_fields(body: Any, spec: dict[str, Field]) -> dict[str, Any]:
    """``fields`` for a JSON value already parsed (an item of a batch): an object whose members
    ``spec`` declares, type-checked; BadRequest otherwise."""
    if not isinstance(body, dict):
        raise BadRequest("each batch item must be a JSON object")
    if type(body) is _Duplicated:  # (inline: every request's body comes here)
        raise _duplicate_error(body.name)
    if not body.keys() <= spec.keys():
        unknown = sorted(set(body) - set(spec))
        # Names come from the client: escaped (ascii) and bounded, never echoed raw.
        names = ", ".join(ascii(n[:40]) for n in unknown[:5])
        raise BadRequest(f"unknown field(s): {names}")
    out: dict[str, Any] = {}
    for name, f in spec.items():
        value = body.get(name)
        if value is None:  # absent or null
            if f.required:
                raise BadRequest(f"missing required field {name}", field=name)
            continue
        # JSON has one number type: 1.0 is the integer 1 (as JSON Schema's "integer" says), so an
        # integral float passes where an int is wanted; 1.5 does not
        if type(value) is float and value.is_integer() and _takes_int(f.kind):
            value = int(value)
        # bool is an int subclass: a bool passes only where bool itself is allowed
        if not isinstance(value, f.kind) or (type(value) is bool and not _takes_bool(f.kind)):
            raise BadRequest(f"field {name} has the wrong type", field=name)
        out[name] = value
    return out


def b64(value: str | None, name: str) -> bytes | None:
    """Canonical standard base64: the alphabet, padding, and no stray bits before the padding
    (``a2b_base64`` in strict mode still takes "QR==" for "QQ=="), so each value has one spelling
    and the API description's pattern (api/openapi.py ``B64_PATTERN``) is exactly this rule."""
    if value is None:
        return None
    try:
        data = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadRequest(f"{name} must be standard base64 with padding") from None
    tail = 1 if value.endswith("==") else 2  # data bytes in a padded last group
    if value.endswith("=") and (binascii.b2a_base64(data[-tail:], newline=False)
                                != value[-4:].encode("ascii")):
        raise BadRequest(f"{name} must be canonical base64 (no stray bits before the padding)")
    return data


def b64s(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def query(req: Request, allowed: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, values in req.query.items():
        if name not in allowed:
            raise BadRequest(f"unknown query parameter {name[:40]!a}")
        if len(values) != 1:
            raise BadRequest(f"query parameter {name} given more than once")
        out[name] = values[0]
    return out


def not_modified(req: Request, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): ``W/`` prefixes are ignored,
    for key listings and dashboard files alike."""
    header = ",".join(req.headers.get_all("if-none-match"))
    if not header:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in candidates or etag in candidates


MAX_VERSION = 999_999_999  # key versions: at most 9 digits (crypto/ops.py tokens)


def int_field(value: int | None, name: str, low: int, high: int) -> int | None:
    """A JSON integer member within the bounds the API description publishes; 400 else."""
    if value is not None and not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return value


def int_param(value: str | None, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    # ASCII digits only ("²".isdigit() is True), and no longer than ``high`` itself
    if (not value.isascii() or not value.isdigit() or len(value) > len(str(high))
            or not low <= int(value) <= high):
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(value)
