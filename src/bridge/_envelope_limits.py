"""Limits on an untrusted message body, checked before and while it is parsed.

Whoever may publish on the sync subject (the peer, or anyone holding its
permission) decides what the consumer parses.  One crafted body must cost a bounded
amount of work and end as ONE ``malformed`` dead letter — never an exception that
escapes the decode (``RecursionError``, ``OverflowError``, ``UnicodeDecodeError``),
nor a value the inbox cannot store (which would fail the batch's transaction).
:func:`load_json` and :func:`text_field` raise :class:`~bridge.errors.EnvelopeError`
naming the limit or field; :meth:`bridge.envelope.Envelope.from_bytes` applies them
in this order:

1. **Size** before anything else: a body over ``max_body_bytes`` is not read at all.
2. **UTF-8**, strictly (the wire contract; no UTF-16/32 guessing).
3. **Nesting**: more than ``max_json_depth`` open arrays/objects is refused by an
   iterative scan (:func:`json_depth_exceeds`, strings skipped), so the recursive
   parser that runs next never goes deeper than that.
4. **Strict JSON**: no ``NaN``/``Infinity``, floats finite, integers within signed
   64 bits (what PostgreSQL's ``bigint`` holds), no duplicate key in any object (two
   parsers must not read two different events out of one body).
5. **Fields** (:func:`text_field`): each string the envelope carries has a type, a
   maximum length (``max_name_length`` = the inbox's ``event_type`` /
   ``resource_type`` column width for names, ``max_id_length`` for ids), no NUL
   character and no lone surrogate (PostgreSQL stores neither).

The limits come from :class:`~bridge.config.ConsumerOptions` (``max_body_bytes``,
``max_json_depth``, ``max_id_length``); :data:`DEFAULT_LIMITS` are its defaults.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from sqlalchemy import String

from bridge.config import ConsumerOptions
from bridge.errors import EnvelopeError
from bridge.schema import inbox


def _column_width(name: str) -> int:
    column_type = inbox.c[name].type
    assert isinstance(column_type, String) and column_type.length is not None
    return column_type.length


#: Names (event_type, resource_type, producer, origin) fit the inbox's name columns.
NAME_WIDTH = min(_column_width("event_type"), _column_width("resource_type"))
TIMESTAMP_WIDTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_INT_DIGITS = 20  # more characters than any in-range integer (sign + 19 digits)
_ESCAPED = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# opening bracket: +1, closing bracket: -1 (as a signed byte)
_STEPS = bytes.maketrans(b"[{]}", bytes([1, 1, 255, 255]))
_DEFAULTS = ConsumerOptions()


@dataclass(frozen=True, slots=True)
class EnvelopeLimits:
    """The limits one consumer applies (module doc); defaults = ConsumerOptions' defaults."""

    max_body_bytes: int = _DEFAULTS.max_body_bytes
    max_json_depth: int = _DEFAULTS.max_json_depth
    max_id_length: int = _DEFAULTS.max_id_length
    max_name_length: int = NAME_WIDTH

    @classmethod
    def from_options(cls, options: ConsumerOptions) -> EnvelopeLimits:
        return cls(
            max_body_bytes=options.max_body_bytes,
            max_json_depth=options.max_json_depth,
            max_id_length=options.max_id_length,
        )


DEFAULT_LIMITS = EnvelopeLimits()


def json_depth_exceeds(text: str, limit: int) -> bool:
    """True when ``text`` opens more than ``limit`` nested arrays/objects (no recursion).

    Brackets inside JSON strings do not count.  For invalid JSON the answer is never
    lower than the depth a parser reaches before it finds the error, so a ``False``
    here means parsing recurses at most ``limit`` levels.  Every step runs in C
    (``str.replace``, linear regular expressions, ``accumulate``), so a body full of
    brackets costs about as much as parsing it, never more.
    """
    if text.count("[") + text.count("{") <= limit:  # the common case: nothing to scan
        return False
    # Inside strings: a pair of backslashes is one escaped backslash, and what remains
    # of a backslash escapes the next character; once both are gone, every quote
    # opens or closes a string.  (Outside strings JSON has no backslash, and a parser
    # stops at the first one, so this cannot hide nesting it would reach.)
    bare = _ESCAPED.sub("", text.replace("\\\\", ""))
    bare = _STRING.sub("", bare)
    unterminated = bare.find('"')  # a parser fails inside it: nothing after it nests
    if unterminated >= 0:
        bare = bare[:unterminated]
    skeleton = _NOT_BRACKET.sub("", bare).encode("ascii").translate(_STEPS)
    if len(skeleton) <= limit:
        return False
    # Running depth; closers beyond the top level only lower it (a parser stops there).
    return max(accumulate(array("b", skeleton))) > limit


def load_json(data: bytes, limits: EnvelopeLimits = DEFAULT_LIMITS) -> Any:
    """Parse an untrusted body within ``limits``; EnvelopeError says which rule it broke."""
    if len(data) > limits.max_body_bytes:
        raise EnvelopeError(
            f"body is {len(data)} bytes, over consumer.max_body_bytes ({limits.max_body_bytes})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"body is not UTF-8: {exc}") from exc
    if json_depth_exceeds(text, limits.max_json_depth):
        raise EnvelopeError(
            f"JSON nesting is deeper than consumer.max_json_depth ({limits.max_json_depth})"
        )
    try:
        return _DECODER.decode(text)
    except EnvelopeError:
        raise
    except json.JSONDecodeError as exc:
        raise EnvelopeError(f"body is not valid JSON: {exc}") from exc
    except (RecursionError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise EnvelopeError(f"body cannot be decoded: {type(exc).__name__}: {exc}") from exc


def text_field(value: object, name: str, max_length: int, limit_name: str) -> str:
    """``value`` of field ``name`` as a storable string of at most ``max_length`` characters.

    ``limit_name`` is what the error calls the limit (e.g. ``consumer.max_id_length``).
    """
    if not isinstance(value, str):
        raise EnvelopeError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > max_length:
        raise EnvelopeError(f"{name} is {len(value)} characters, over {limit_name} ({max_length})")
    if "\x00" in value:
        raise EnvelopeError(f"{name} contains a NUL character (PostgreSQL cannot store it)")
    if not value.isascii():  # only non-ASCII text can hold a lone surrogate
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EnvelopeError(f"{name} is not valid Unicode text: {exc.reason}") from exc
    return value


def _refuse_constant(name: str) -> Any:
    raise EnvelopeError(f"{name} is not a JSON number (NaN and Infinity are refused)")


class JSONNumber(float):
    """A JSON number with a fraction or exponent: a ``float`` that keeps its source
    ``text``, so a Numeric column gets the exact decimal the sender wrote
    (:mod:`bridge.sync.convert`) while everything else sees a plain float."""

    __slots__ = ("text",)
    text: str


def _finite_float(text: str) -> float:
    value = JSONNumber(text)
    if not math.isfinite(value):
        raise EnvelopeError(f"number {text[:40]} is not finite")
    value.text = text
    return value


def _bounded_int(text: str) -> int:
    # the length check first: int() of a huge digit string is itself expensive
    if len(text) > _INT_DIGITS or not INT_MIN <= (value := int(text)) <= INT_MAX:
        raise EnvelopeError(f"integer {text[:24]}... is out of range (signed 64 bits)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise EnvelopeError(f"duplicate key {key[:64]!r} in a JSON object")
            seen.add(key)
    return obj


# Built once: constructing a decoder per call costs more than the hooks themselves.
_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
    parse_int=_bounded_int,
    object_pairs_hook=_unique_keys,
)
