"""Payload ↔ column values: an event's JSON payload as the column values of a synced
model, driven by the model's column types, and a column value as JSON.

:class:`RowCodec` (one per model) decodes a payload — the sender's full row snapshot,
keyed by the model's attribute names — into column values keyed by column name:

==========================  =================================================================
column type                 accepted JSON value → stored value
==========================  =================================================================
``Boolean``                 ``true`` / ``false`` only
``SmallInteger`` /          an integer (never a bool, never a float, never a string) within
``Integer`` / ``BigInteger`` the column's range (16 / 32 / 64 bits signed)
``Numeric``                 a string (``"19.99"``, ``"1e3"``) or a number → ``Decimal``,
                            exact: never through a binary float (a JSON number keeps its
                            source text, :class:`bridge._envelope_limits.JSONNumber`); NaN
                            and Infinity refused; with a precision/scale, a value that
                            does not fit or would be rounded is refused
``Float`` / ``Double``      a finite number → ``float``
``String`` / ``Text``       a string within the column's ``length`` (characters), no NUL
``Enum``                    the database label, else a member's value → the Python enum
                            member (or the label for a string-only enum)
``Date`` / ``Time``         ISO 8601 (``2026-01-31``, ``12:30:00.5``)
``DateTime``                the envelope's timestamp format
                            (:func:`bridge.envelope.parse_timestamp`); aware UTC, or naive
                            UTC for a column ``timezone=False``
``Uuid`` / ``UUID``         the text form (``uuid.UUID``, or ``str`` with ``as_uuid=False``)
``JSON`` / ``JSONB``        any JSON value, as is
``ARRAY``                   a list of the item type's values (``null`` items allowed),
                            nested lists for more dimensions
``LargeBinary``             hex, with or without PostgreSQL's ``\\x`` prefix → ``bytes``
==========================  =================================================================

A ``null`` is accepted for a nullable column only.  A column missing from the payload
is ``None`` when nullable, its Python-side scalar default when it has one, and a
refusal otherwise; keys that name no column are ignored (a newer sender's additions).
Any refusal is ``Reject(reason="invalid_payload")`` naming the column — a dead letter,
never a crash of the handler.  A type not in the table passes its JSON value through
unchanged (the database decides; a value it refuses fails the handler).
:func:`to_json` is the other direction (value-driven): what capture puts in a payload.
No I/O.
"""

from __future__ import annotations

import decimal
import enum
import math
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import Column, inspect
from sqlalchemy.types import TypeEngine

from bridge.envelope import format_timestamp, parse_timestamp
from bridge.errors import EnvelopeError, Reject
from bridge.routing.outcomes import REASON_INVALID_PAYLOAD

#: PostgreSQL's ``numeric`` limits: digits before and after the decimal point.
_NUMERIC_MAX_INTEGER_DIGITS = 131072
_NUMERIC_MAX_SCALE = 16383
_INTEGER_BITS = ((sa.BigInteger, 64), (sa.SmallInteger, 16), (sa.Integer, 32))


class Invalid(ValueError):
    """A JSON value that is not a value of its column (the message says why)."""


def to_json(value: Any) -> Any:
    """A column value as JSON: ``Decimal``/``UUID`` → text, datetimes → the envelope's
    timestamp format, ``date``/``time`` → ISO 8601, ``bytes`` → hex, an enum member →
    its name (SQLAlchemy's default database label), lists and dicts element-wise."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


def from_json(type_: TypeEngine[Any], value: Any) -> Any:
    """``value`` (not ``None``) as a value of a column of type ``type_``; raises
    :class:`Invalid` (module doc's table)."""
    if isinstance(type_, sa.TypeDecorator):
        type_ = type_.impl_instance
    if isinstance(type_, sa.ARRAY):
        return _array(type_, value)
    if isinstance(type_, sa.Boolean):
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {_show(value)}")
        return value
    if isinstance(type_, sa.Enum):
        return _enum(type_, value)
    if isinstance(type_, sa.Integer):
        return _integer(type_, value)
    if isinstance(type_, sa.Float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise Invalid("expected a finite number")
        return float(value)
    if isinstance(type_, sa.Numeric):
        return _numeric(type_, value)
    if isinstance(type_, sa.DateTime):
        moment = parse_timestamp(_text(value))
        return moment if type_.timezone else moment.replace(tzinfo=None)
    if isinstance(type_, sa.Date):
        return date.fromisoformat(_text(value))
    if isinstance(type_, sa.Time):
        return time.fromisoformat(_text(value))
    if isinstance(type_, sa.Uuid):
        parsed = uuid.UUID(_text(value))
        return parsed if type_.as_uuid else str(parsed)
    if isinstance(type_, sa.JSON):
        return value
    if isinstance(type_, sa.String):
        return _string(type_, value)
    if isinstance(type_, sa.LargeBinary):
        text = _text(value)
        return bytes.fromhex(text[2:] if text.startswith("\\x") else text)
    return value


class RowCodec:
    """Decodes payloads of one model into column values (module doc)."""

    def __init__(self, model: type[Any]) -> None:
        mapper = inspect(model)
        #: attribute key (the payload's key) → its column
        self.columns: dict[str, Column[Any]] = {}
        for attr in mapper.column_attrs:
            if len(attr.columns) == 1 and isinstance(attr.columns[0], Column):
                self.columns[attr.key] = attr.columns[0]
        self.model = model

    def decode(self, payload: Mapping[str, Any], *, what: str) -> dict[str, Any]:
        """The payload as ``{column name: value}``; ``Reject("invalid_payload")`` naming the
        column (``what`` names the event in the message)."""
        values: dict[str, Any] = {}
        for key, column in self.columns.items():
            try:
                values[column.name] = self._value(column, payload, key)
            except (Invalid, ValueError, TypeError, EnvelopeError, OverflowError) as exc:
                reason = str(exc)[:200] or type(exc).__name__
                raise Reject(
                    f"{what} payload: column {column.table.name}.{column.name}: {reason}",
                    reason=REASON_INVALID_PAYLOAD,
                ) from exc
        return values

    @staticmethod
    def _value(column: Column[Any], payload: Mapping[str, Any], key: str) -> Any:
        if key not in payload:
            default = column.default
            if default is not None and default.is_scalar:
                return cast("Any", default).arg
            if column.nullable:
                return None
            raise Invalid("missing (the column is not nullable)")
        value = payload[key]
        if value is None:
            if not column.nullable:
                raise Invalid("null (the column is not nullable)")
            return None
        return from_json(column.type, value)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {_show(value)}")
    return value


def _string(type_: sa.String, value: Any) -> str:
    text = _text(value)
    if type_.length is not None and len(text) > type_.length:
        raise Invalid(f"{len(text)} characters, longer than the column's {type_.length}")
    if "\x00" in text:
        raise Invalid("contains a NUL character")
    return text


def _integer(type_: sa.Integer, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {_show(value)}")
    bits = next(bits for kind, bits in _INTEGER_BITS if isinstance(type_, kind))
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise Invalid(f"integer {str(value)[:24]} is out of range ({bits} bits signed)")
    return value


def _numeric(type_: sa.Numeric[Any], value: Any) -> decimal.Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid(f"expected a decimal string or number, got {_show(value)}")
    text = value if isinstance(value, str) else getattr(value, "text", None) or repr(value)
    try:
        number = decimal.Decimal(text.strip() if isinstance(value, str) else text)
    except decimal.InvalidOperation as exc:
        raise Invalid(f"{text[:40]!r} is not a decimal number") from exc
    if not number.is_finite():
        raise Invalid(f"{text[:40]!r} is not a finite number")
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    scale = max(-exponent, 0)
    integer_digits = max(len(digits) + exponent, 0)
    precision, max_scale = type_.precision, type_.scale
    if max_scale is None and precision is not None:
        max_scale = 0  # numeric(p) is numeric(p, 0)
    if max_scale is not None and scale > max_scale:
        stripped = number.normalize() if number else decimal.Decimal(0)
        if max(-cast("int", stripped.as_tuple().exponent), 0) > max_scale:
            raise Invalid(f"{text[:40]} has more than {max_scale} decimals (never rounded)")
        number = stripped
    limit = (precision - (max_scale or 0)) if precision is not None else None
    if integer_digits > (limit if limit is not None else _NUMERIC_MAX_INTEGER_DIGITS):
        raise Invalid(f"{text[:40]} has too many digits before the decimal point")
    if scale > _NUMERIC_MAX_SCALE:
        raise Invalid(f"{text[:40]} has more decimals than PostgreSQL stores")
    return number


def _enum(type_: sa.Enum, value: Any) -> Any:
    label = _text(value)
    enum_class = type_.enum_class
    if enum_class is None:
        if label not in type_.enums:
            raise Invalid(f"{label[:40]!r} is not one of {', '.join(type_.enums)[:120]}")
        return label
    lookup = cast("Mapping[str, Any]", getattr(type_, "_object_lookup", {}))
    if label in lookup and lookup[label] is not None:
        return lookup[label]
    try:
        return enum_class(label)
    except ValueError as exc:
        raise Invalid(f"{label[:40]!r} is not a {enum_class.__name__}") from exc


def _array(type_: sa.ARRAY[Any], value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(f"expected an array, got {_show(value)}")
    item_type = type_.item_type
    return [
        None
        if item is None
        else _array(type_, item)
        if isinstance(item, list) and not isinstance(item_type, sa.JSON)
        else from_json(item_type, item)
        for item in value
    ]
