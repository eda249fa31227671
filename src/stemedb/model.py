"""Validation of user input into the normalized operations the WAL records.

Everything here is pure: it raises :class:`InvalidInput` with a precise ``code``
and message, and never touches state.  The HTTP layer and embedded users go
through the same functions, so a bad request is refused before it reaches the
writer and changes nothing.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from . import limits
from .errors import InvalidInput

ASSERT_FIELDS = {"subject", "predicate", "object", "author", "confidence", "source"}
VOTE_FIELDS = {"assertion_id", "voter", "value"}


def _text(obj: dict[str, Any], key: str, max_bytes: int, *, required: bool = True,
          min_bytes: int = 1, where: str = "") -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise InvalidInput(f"{where}{key} is required", code="missing_field")
        return None
    v = obj[key]
    if not isinstance(v, str):
        raise InvalidInput(f"{where}{key} must be a string, got {type(v).__name__}",
                           code="invalid_type")
    if v.isascii():  # one byte per character: no need to encode
        n = len(v)
    else:
        try:
            n = len(v.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{where}{key} is not valid UTF-8", code="invalid_utf8"
                               ) from exc
    if n < min_bytes:
        raise InvalidInput(f"{where}{key} must not be empty", code="too_short")
    if n > max_bytes:
        raise InvalidInput(f"{where}{key} is {n} bytes; the limit is {max_bytes}",
                           code="too_long")
    return v


def check_json_value(value: Any, depth: int = 0) -> None:
    """Reject NaN/Infinity, non-string keys and nesting deeper than json_depth_max."""
    if depth > limits.json_depth_max:
        raise InvalidInput(f"object nests deeper than {limits.json_depth_max} levels",
                           code="too_deep")
    t = type(value)
    if t is str or t is int or t is bool or value is None:  # the common leaves first
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("NaN and Infinity are not JSON", code="invalid_number")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput("object keys must be strings", code="invalid_type")
            check_json_value(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_json_value(v, depth + 1)
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise InvalidInput(f"unsupported JSON value {type(value).__name__}",
                           code="invalid_type")


def encode_json(value: Any) -> bytes:
    """Canonical JSON: UTF-8, compact, keys sorted (orjson, one C call).

    Callers validate first (:func:`check_json_value`): orjson would write NaN as null.
    An integer outside 64 bits is refused here as invalid input.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        reason = str(exc)
        code = "invalid_utf8" if "surrogate" in reason or "UTF-8" in reason \
            else "invalid_number" if "Integer" in reason else "invalid_type"
        raise InvalidInput(f"value cannot be encoded as JSON: {reason}", code=code) from exc


_LEAF_TYPES = (str, int, bool, type(None))


def _assertion_fast(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The common, valid assertion in a few type checks; None sends it to the full
    checks of :func:`validate_assertion_strict`, which name whatever is wrong.

    Accepted here only: known fields; ASCII subject, predicate, author (and source)
    within their limits, so characters are bytes; an ``object`` that passes
    :func:`check_json_value` and encodes within ``object_bytes_max``; a confidence
    that is a float or int in [0, 1].  The result is the strict function's, key for
    key (tests/test_model_fast.py compares them).
    """
    if not obj.keys() <= ASSERT_FIELDS:
        return None
    subject, predicate, author = obj.get("subject"), obj.get("predicate"), obj.get("author")
    if not (type(subject) is str and type(predicate) is str and type(author) is str
            and subject.isascii() and predicate.isascii() and author.isascii()
            and 0 < len(subject) <= limits.subject_bytes_max
            and 0 < len(predicate) <= limits.predicate_bytes_max
            and 0 < len(author) <= limits.author_bytes_max
            and "object" in obj):
        return None
    value = obj["object"]
    if type(value) not in _LEAF_TYPES:
        check_json_value(value)
    if len(encode_json(value)) > limits.object_bytes_max:
        return None
    out: dict[str, Any] = {"subject": subject, "predicate": predicate, "author": author,
                           "object": value}
    conf = obj.get("confidence")
    if conf is not None:
        t = type(conf)
        if not ((t is float or t is int) and 0 <= conf <= 1):
            return None
        out["confidence"] = float(conf)
    src = obj.get("source")
    if src is not None:
        if not (type(src) is str and src.isascii() and len(src) <= limits.source_bytes_max):
            return None
        out["source"] = src
    return out


def validate_assertion(obj: Any, where: str = "") -> dict[str, Any]:
    """Check an assertion and return its normalized form (see the module docstring)."""
    if type(obj) is dict:
        out = _assertion_fast(obj)
        if out is not None:
            return out
    return validate_assertion_strict(obj, where)


def validate_assertion_strict(obj: Any, where: str = "") -> dict[str, Any]:
    """Every rule, in order, with a precise error for the first one broken."""
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where}assertion must be a JSON object", code="invalid_type")
    unknown = set(obj) - ASSERT_FIELDS
    if unknown:
        raise InvalidInput(f"{where}unknown field(s): {', '.join(sorted(map(str, unknown)))}",
                           code="unknown_field")
    out: dict[str, Any] = {
        "subject": _text(obj, "subject", limits.subject_bytes_max, where=where),
        "predicate": _text(obj, "predicate", limits.predicate_bytes_max, where=where),
        "author": _text(obj, "author", limits.author_bytes_max, where=where),
    }
    if "object" not in obj:
        raise InvalidInput(f"{where}object is required", code="missing_field")
    check_json_value(obj["object"])
    encoded = encode_json(obj["object"])
    if len(encoded) > limits.object_bytes_max:
        raise InvalidInput(f"{where}object encodes to {len(encoded)} bytes; the limit is "
                           f"{limits.object_bytes_max}", code="too_long")
    out["object"] = obj["object"]
    conf = obj.get("confidence")
    if conf is not None:
        if isinstance(conf, bool) or not isinstance(conf, (int, float)):
            raise InvalidInput(f"{where}confidence must be a number", code="invalid_type")
        if not math.isfinite(conf) or not 0 <= conf <= 1:
            raise InvalidInput(f"{where}confidence must be between 0 and 1",
                               code="out_of_range")
        out["confidence"] = float(conf)
    src = _text(obj, "source", limits.source_bytes_max, required=False, min_bytes=0,
                where=where)
    if src is not None:
        out["source"] = src
    return out


def validate_vote(obj: Any, where: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where}vote must be a JSON object", code="invalid_type")
    unknown = set(obj) - VOTE_FIELDS
    if unknown:
        raise InvalidInput(f"{where}unknown field(s): {', '.join(sorted(map(str, unknown)))}",
                           code="unknown_field")
    aid = obj.get("assertion_id")
    if isinstance(aid, bool) or not isinstance(aid, int):
        raise InvalidInput(f"{where}assertion_id must be an integer", code="invalid_type")
    if aid < 1 or aid > 2**63 - 1:
        raise InvalidInput(f"{where}assertion_id out of range", code="out_of_range")
    voter = _text(obj, "voter", limits.voter_bytes_max, where=where)
    return {"assertion_id": aid, "voter": voter, "value": validate_vote_value(
        obj.get("value"), where)}


def validate_vote_value(value: Any, where: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (1, -1):
        raise InvalidInput(f"{where}value must be 1 (support) or -1 (dispute)",
                           code="invalid_vote_value")
    return value


def validate_batch(obj: Any) -> list[dict[str, Any]]:
    if not isinstance(obj, dict):
        raise InvalidInput("batch must be a JSON object with an ops array",
                           code="invalid_type")
    unknown = set(obj) - {"ops"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}",
                           code="unknown_field")
    ops = obj.get("ops")
    if not isinstance(ops, list):
        raise InvalidInput("ops must be an array", code="invalid_type")
    if not ops:
        raise InvalidInput("ops must not be empty", code="too_short")
    if len(ops) > limits.batch_ops_max:
        raise InvalidInput(f"batch has {len(ops)} ops; the limit is {limits.batch_ops_max}",
                           code="batch_too_large")
    out: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or len(op) != 1:
            raise InvalidInput(f"ops[{i}] must be {{\"assert\": {{...}}}} or "
                               f"{{\"vote\": {{...}}}}", code="invalid_op")
        ((kind, body),) = op.items()
        if kind == "assert":
            checked = type(body) is dict and _assertion_fast(body)
            out.append({"assert": checked or validate_assertion_strict(body, f"ops[{i}].")})
        elif kind == "vote":
            out.append({"vote": validate_vote(body, f"ops[{i}].")})
        else:
            raise InvalidInput(f"ops[{i}]: unknown op {kind!r}", code="invalid_op")
    return out
