"""The id layout (bridge.ids.scheme): limits, round trips, JSON exactness, hostile values."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import IdentityError, InvalidIdError
from bridge.ids import (
    EPOCH,
    ERROR_CODES,
    LAST_TIME,
    MAX_ID,
    MAX_SYSTEM,
    compose,
    decode,
    identity_error,
)
from bridge.ids.ddl import SQLSTATES
from bridge.ids.scheme import MAX_MILLISECOND, SEQUENCES_PER_MS, check_id, parse_id, tick_of

ROOT = Path(__file__).resolve().parents[2]


def test_the_limits_the_docs_state() -> None:
    assert MAX_ID == 2**53 - 1
    assert MAX_SYSTEM == 63 and SEQUENCES_PER_MS == 64
    assert datetime(2025, 1, 1, tzinfo=UTC) == EPOCH
    assert datetime(2094, 9, 7, 15, 47, 35, 551000, tzinfo=UTC) == LAST_TIME


def test_the_last_id_of_the_scheme_is_below_2_to_the_53() -> None:
    last = compose(LAST_TIME, SEQUENCES_PER_MS - 1, MAX_SYSTEM)
    assert last == MAX_ID < 2**53
    # exact as a double, so JSON parsers that read numbers as doubles keep it
    assert float(last) == last and int(json.loads(json.dumps(last), parse_int=float)) == last
    assert decode(last).time == LAST_TIME
    with pytest.raises(IdentityError) as refused:
        compose(LAST_TIME + timedelta(milliseconds=1), 0, 0)
    assert refused.value.code == "out_of_range"


@given(
    st.integers(0, MAX_MILLISECOND),
    st.integers(0, SEQUENCES_PER_MS - 1),
    st.integers(0, MAX_SYSTEM),
)
def test_decode_is_the_inverse_of_compose(millisecond: int, sequence: int, system: int) -> None:
    value = compose(millisecond, sequence, system)
    provenance = decode(value)
    assert (provenance.millisecond, provenance.sequence, provenance.system) == (
        millisecond,
        sequence,
        system,
    )
    assert compose(provenance.time, provenance.sequence, provenance.system) == value
    assert float(value) == value  # every id is exact as a double


@given(st.integers(0, MAX_ID), st.integers(0, MAX_ID))
def test_ids_order_by_time_then_sequence(a: int, b: int) -> None:
    da, db = decode(a), decode(b)
    if (da.time, da.sequence) < (db.time, db.sequence):
        assert tick_of(a) < tick_of(b) and a < b


def test_a_time_is_truncated_to_the_millisecond_in_any_timezone() -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 6, 1, 12, 0, 0, 123_999, tzinfo=paris)
    value = compose(moment, 5, 7)
    assert decode(value).time == datetime(2026, 6, 1, 11, 0, 0, 123_000, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [-1, MAX_ID + 1, 2**63, True, 1.0, float(2**40), "42", None, 10**30],
)
def test_what_is_not_an_id_is_refused(value: object) -> None:
    with pytest.raises(IdentityError) as refused:
        check_id(value)
    assert refused.value.code == "out_of_range"
    with pytest.raises(IdentityError):
        decode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("time", "sequence", "system", "code"),
    [
        (EPOCH - timedelta(milliseconds=1), 0, 0, "out_of_range"),
        (datetime(2026, 1, 1), 0, 0, "out_of_range"),  # naive: which timezone?
        (0, SEQUENCES_PER_MS, 0, "out_of_range"),
        (0, -1, 0, "out_of_range"),
        (0, 0, MAX_SYSTEM + 1, "system_out_of_range"),
        (0, 0, -1, "system_out_of_range"),
        (0, 0, 2**31, "system_out_of_range"),
        (0, 0, True, "system_out_of_range"),
    ],
)
def test_compose_refuses_parts_outside_the_scheme(
    time: datetime | int, sequence: int, system: int, code: str
) -> None:
    with pytest.raises(IdentityError) as refused:
        compose(time, sequence, system)
    assert refused.value.code == code


def test_every_sql_refusal_has_an_error_code() -> None:
    assert set(SQLSTATES.values()) <= ERROR_CODES
    assert all(state.startswith("BR") and len(state) == 5 for state in SQLSTATES)


@pytest.mark.parametrize("first", ["bridge.schema", "bridge.ids", "bridge.ids.ddl"])
def test_the_modules_import_in_any_order(first: str) -> None:
    # bridge.schema installs the generator's DDL and bridge.ids uses the schema.
    code = f"import {first}; import bridge.ids, bridge.schema; print(bridge.schema.id_settings)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bridge_id_settings"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("1", 1), (42, 42), ("42", 42), (MAX_ID, MAX_ID), (str(MAX_ID), MAX_ID)],
)
def test_parse_id_takes_a_json_integer_or_its_decimal_text(value: object, expected: int) -> None:
    assert parse_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        "0",
        -1,
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "01",
        "1.0",
        "1e3",
        "0x10",
        "",
        "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() says yes, an id says no
        "\u00b2",
        1.0,
        42.0,
        True,
        False,
        None,
        [1],
        {"id": 1},
        b"1",
        MAX_ID + 1,
        str(MAX_ID + 1),
        "9" * 17,
    ],
)
def test_parse_id_refuses_what_a_client_must_not_send_as_an_id(value: object) -> None:
    with pytest.raises(InvalidIdError) as refused:
        parse_id(value, field="organization_id")
    assert isinstance(refused.value, ValueError)  # a bad field to validators
    assert refused.value.code == "out_of_range"
    assert str(refused.value).startswith("organization_id: ")


@pytest.mark.parametrize(
    "value", [10**5000, -(10**5000), "9" * 100_000], ids=["huge", "huge-negative", "long-text"]
)
def test_a_hostile_value_gets_a_bounded_message(value: object) -> None:
    with pytest.raises(InvalidIdError) as refused:
        parse_id(value)
    assert len(str(refused.value)) < 200
    with pytest.raises(InvalidIdError) as refused:
        check_id(value)
    assert len(str(refused.value)) < 200
    with pytest.raises(InvalidIdError) as refused:
        compose(0, 0, value)  # type: ignore[arg-type]
    assert len(str(refused.value)) < 200


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"error {sqlstate}")
        self.sqlstate = sqlstate


class _WrappedError(Exception):
    """How SQLAlchemy wraps a driver's error: ``orig``, the driver's in ``__cause__``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("wrapped")
        self.orig = Exception("adapter")
        self.orig.__cause__ = cause


@pytest.mark.parametrize(("sqlstate", "code"), sorted(SQLSTATES.items()))
def test_every_refusal_of_the_database_maps_to_its_code(sqlstate: str, code: str) -> None:
    for error in (_DriverError(sqlstate), _WrappedError(_DriverError(sqlstate))):
        mapped = identity_error(error)
        assert mapped is not None and mapped.code == code


@pytest.mark.parametrize("error", [ValueError("x"), _DriverError("23505"), _DriverError("BRI99")])
def test_other_errors_are_not_refusals_of_the_generator(error: Exception) -> None:
    assert identity_error(error) is None
