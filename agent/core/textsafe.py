"""Text from outside (Dynamo's JSON, logs, headers) made safe at the boundary: valid Unicode
(a lone surrogate from a `\\ud800` JSON escape cannot be encoded as UTF-8 and used to make every
/metrics answer 500), bounded in length, and parsed within a size and nesting limit. One bad
value becomes one replaced value, never a failed collection."""

from __future__ import annotations

import json
import re
from typing import Any

SURROGATES = re.compile("[\ud800-\udfff]")
ELLIPSIS = "\u2026"
MAX_JSON_DEPTH = 32  # Dynamo's deepest body (frontend /health) nests 4 levels
MAX_NUMBER_DIGITS = 40  # json would spend quadratic time on a 400,000-digit integer


def clean(value: object, limit: int = 256) -> str:
    """`value` as a string that always encodes to UTF-8, at most `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + ELLIPSIS
    if SURROGATES.search(text):
        text = SURROGATES.sub("\ufffd", text)
    return text


def _depth_exceeds(body: bytes, limit: int) -> bool:
    """True when brackets nest deeper than `limit` outside strings (a linear scan, done only
    when the body has that many brackets at all)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _bounded_int(text: str) -> int | float:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH, text_limit: int = 256) -> tuple[Any, str]:
    """(value, "") or (None, why): bodies nested deeper than `max_depth`, numbers longer than
    MAX_NUMBER_DIGITS, and non-JSON are refused; every string in the value is cleaned."""
    if _depth_exceeds(body, max_depth):
        return None, f"JSON nested deeper than {max_depth} levels"
    try:
        value = json.loads(body, parse_int=_bounded_int)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if "digits" in str(exc) else "body is not JSON"
        return None, clean(reason, 120)
    return clean_json(value, text_limit), ""


def clean_json(value: Any, text_limit: int = 256, depth: int = 0) -> Any:
    """Every string (keys included) cleaned; containers cut at 256 items."""
    if isinstance(value, str):
        return clean(value, text_limit)
    if isinstance(value, dict):
        return {
            clean(k, text_limit): clean_json(v, text_limit, depth + 1) for k, v in list(value.items())[:256]
        }
    if isinstance(value, list):
        return [clean_json(v, text_limit, depth + 1) for v in value[:256]]
    if isinstance(value, float) and value != value:
        return None  # NaN
    return value
