"""The id scheme: what the 53 bits of an id mean (pure arithmetic, no database).

An id is one integer below 2**53, so every JSON parser (JavaScript's numbers, ``jq``)
keeps it exact::

    id = ((millisecond * SEQUENCES_PER_MS) + sequence) * SYSTEMS + system

    bits   52 ........................ 12 | 11 ..... 6 | 5 ...... 0
           milliseconds since EPOCH (41)  | sequence (6)| system (6)

- ``millisecond``: milliseconds since :data:`EPOCH` (2025-01-01 UTC), 41 bits, so
  the scheme lasts until :data:`LAST_TIME` (2094-09-07 UTC);
- ``sequence``: 0..63, the ids one system issues within one millisecond;
- ``system``: 0..63, the number of the database that issued the id (configured once
  per database in ``bridge_id_settings``).

``millisecond * SEQUENCES_PER_MS + sequence`` is the *tick*: the generator's state
(``bridge_id_tick``, a PostgreSQL sequence) is the last tick it issued, and the next
one is ``max(last + 1, now)`` — so a 65th id within one millisecond takes the next
millisecond's first tick ("borrows" from the future) instead of colliding.  Ids of one
system therefore increase strictly, and ids of all systems sort roughly by creation
time.  The decoded time is when the id was issued, or up to the database's
``max_lead_ms`` later when it borrowed (docs/IDENTITIES.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bridge.errors import InvalidIdError

#: Bits of each part, most significant first.
TIME_BITS = 41
SEQUENCE_BITS = 6
SYSTEM_BITS = 6

SEQUENCES_PER_MS = 1 << SEQUENCE_BITS
SYSTEMS = 1 << SYSTEM_BITS
MAX_SYSTEM = SYSTEMS - 1
MAX_MILLISECOND = (1 << TIME_BITS) - 1
#: The last tick (millisecond and sequence together) the scheme can express.
MAX_TICK = (1 << (TIME_BITS + SEQUENCE_BITS)) - 1
#: The largest id: 2**53 - 1, the largest integer a double holds exactly.
MAX_ID = (1 << (TIME_BITS + SEQUENCE_BITS + SYSTEM_BITS)) - 1

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
#: EPOCH as Unix milliseconds (what the SQL function subtracts from the clock).
EPOCH_UNIX_MS = int(EPOCH.timestamp() * 1000)
#: The last millisecond an id can name; after it the generator refuses (``exhausted``).
LAST_TIME = EPOCH + timedelta(milliseconds=MAX_MILLISECOND)

#: Marks the generator's SQL: bridge.ids.generator.verify() compares it, so a database
#: installed with another layout is reported instead of mixing two schemes.
SCHEME_MARKER = f"bridge-ids v1 {TIME_BITS}/{SEQUENCE_BITS}/{SYSTEM_BITS} epoch {EPOCH_UNIX_MS}"


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an id comes from: when (``time``, millisecond precision, UTC), its
    ``sequence`` within that millisecond and the ``system`` that issued it."""

    time: datetime
    sequence: int
    system: int

    @property
    def millisecond(self) -> int:
        """Milliseconds since :data:`EPOCH`."""
        return (self.time - EPOCH) // timedelta(milliseconds=1)


def _shown(value: object) -> str:
    """A refused value for a message, bounded: a hostile integer can be too long to
    print (Python refuses more than 4300 digits), a string too long to log."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    return repr(value)[:60]


def check_id(value: object) -> int:
    """``value`` as an id of the scheme, or :class:`InvalidIdError` (``code="out_of_range"``).

    Only a real ``int`` in 0..MAX_ID is accepted: a bool, a float or a numeric string is
    not an id (a caller that accepts strings converts them itself, deliberately).
    """
    if type(value) is not int:
        raise InvalidIdError(
            f"an id is an integer, not {type(value).__name__}", code="out_of_range"
        )
    if not 0 <= value <= MAX_ID:
        raise InvalidIdError(
            f"id {_shown(value)} is outside 0..{MAX_ID} (2**53 - 1)", code="out_of_range"
        )
    return value


def check_system(system: object) -> int:
    """``system`` as a system number (0..MAX_SYSTEM), or :class:`InvalidIdError`
    (``code="system_out_of_range"``)."""
    if type(system) is not int or not 0 <= system <= MAX_SYSTEM:
        raise InvalidIdError(
            f"system number {_shown(system)} is outside 0..{MAX_SYSTEM}", code="system_out_of_range"
        )
    return system


#: The text of an id in a URL or a JSON string: ASCII digits, no sign, no leading zero,
#: at most the 16 digits of MAX_ID (so nothing longer is ever converted).
_ID_TEXT = re.compile(r"[1-9][0-9]{0,15}")


def parse_id(value: object, *, field: str = "id") -> int:
    """An id received from outside (a JSON body, an event payload, a URL): a JSON
    integer, or its canonical decimal text (``"42"``), in 1..MAX_ID.

    The one rule for untrusted ids: the seed's and the Ruby gem's clients send bare
    numbers; a numeric string is accepted as the same id.  Refused with
    :class:`InvalidIdError` (a ``ValueError`` naming ``field``): 0 and negatives, values
    of 2**53 and above (a JSON parser may already have rounded them), booleans, floats
    (``42.0``), signs, spaces, leading zeros, non-ASCII digits, anything else.  Ids of
    other origins below 2**53 (a Rails app's ``1, 2, 3``) are accepted: whether such a
    record exists is the caller's look-up.
    """
    if isinstance(value, str):
        if not _ID_TEXT.fullmatch(value):
            raise InvalidIdError(
                f"{field}: {_shown(value)} is not a positive integer id", code="out_of_range"
            )
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_ID:
        shown = _shown(value) if type(value) is int else f"a {type(value).__name__}"
        raise InvalidIdError(
            f"{field}: {shown} is not a positive integer id below 2**53", code="out_of_range"
        )
    return value


def tick_of(value: int) -> int:
    """The tick (millisecond and sequence) of an id: what the generator's state compares."""
    return check_id(value) >> SYSTEM_BITS


def decode(value: int) -> Provenance:
    """The provenance of an id: ``compose(*decode(i)) == i`` for every valid id."""
    tick = tick_of(value)
    return Provenance(
        time=EPOCH + timedelta(milliseconds=tick >> SEQUENCE_BITS),
        sequence=tick & (SEQUENCES_PER_MS - 1),
        system=value & MAX_SYSTEM,
    )


def compose(time: datetime | int, sequence: int, system: int) -> int:
    """The id of ``system``'s ``sequence``-th id at ``time`` (a timezone-aware datetime,
    truncated to the millisecond, or milliseconds since :data:`EPOCH`).

    Raises :class:`InvalidIdError` when a part is outside the scheme (before EPOCH,
    after LAST_TIME, sequence or system outside 0..63).
    """
    if isinstance(time, datetime):
        if time.tzinfo is None:
            raise InvalidIdError("compose() needs a timezone-aware time", code="out_of_range")
        millisecond = (time - EPOCH) // timedelta(milliseconds=1)
    else:
        millisecond = time
    if type(millisecond) is not int or not 0 <= millisecond <= MAX_MILLISECOND:
        raise InvalidIdError(
            f"{_shown(time)} is outside the scheme's time "
            f"({EPOCH.isoformat()} .. {LAST_TIME.isoformat()})",
            code="out_of_range",
        )
    if type(sequence) is not int or not 0 <= sequence < SEQUENCES_PER_MS:
        raise InvalidIdError(
            f"sequence {_shown(sequence)} is outside 0..{SEQUENCES_PER_MS - 1}", code="out_of_range"
        )
    return ((millisecond << SEQUENCE_BITS | sequence) << SYSTEM_BITS) | check_system(system)
