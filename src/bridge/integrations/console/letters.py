"""The console's view of this app's dead letters: filters, a page of them, one letter,
and the sequences an action names.

Reading goes through :class:`bridge.routing.dlq.DeadLetters` (JetStream direct get,
oldest first); acting through :func:`bridge.routing.replay.replay_many` and
:meth:`~bridge.routing.dlq.DeadLetters.purge`, with their rules (a replay goes only
to this app's consume subject under a deterministic id; a replayed letter leaves the
DLQ).

**Filters** (:class:`LetterFilter`, from the query string; a value that does not
parse is dropped and reported, never an error page): ``reason`` (exact), ``type``
(the body's ``event_type``, exact), ``min_age`` / ``max_age`` in minutes (from the
letter's ``x-dlq-at``; a letter whose time cannot be read matches no age filter).
A page scans at most ``scan_limit`` letters (and about :data:`SCAN_BYTES` of
bodies) from ``start`` and shows up to ``page_size`` that match, with where the
next page starts.

Everything a letter carries — body, headers, reason, error message — was written by
whoever could publish on the DLQ subject: it is data for the templates to escape.
The event type is found by a bounded regular expression, so a huge or deeply nested
body costs no parse in the list; the letter's page pretty-prints a body of up to
:data:`PRETTY_LIMIT` bytes that is JSON, and shows anything else as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from bridge.envelope import parse_timestamp
from bridge.errors import EnvelopeError
from bridge.routing.dlq import DeadLetters
from bridge.routing.letter import H_TRUNCATED, DeadLetter

PRETTY_LIMIT = 256 * 1024
#: Bytes of bodies one page reads at most (letters can be up to ``max_payload`` each):
#: past it the page ends and "next page" goes on, so a reload costs bounded transfer.
SCAN_BYTES = 16 * 1024 * 1024
_EVENT_TYPE = re.compile(rb'"event_type"\s*:\s*"([^"\\]{1,128})"')
_RESOURCE_ID = re.compile(rb'"resource_id"\s*:\s*"([^"\\]{1,255})"')
_FILTER_TEXT = 128
_SEQ = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which letters the page shows (module doc); ``problems`` lists dropped values."""

    reason: str = ""
    event_type: str = ""
    min_age_minutes: float | None = None
    max_age_minutes: float | None = None
    start: int = 1
    problems: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> LetterFilter:
        problems: list[str] = []

        def minutes(name: str) -> float | None:
            raw = (query.get(name) or "").strip()
            if not raw:
                return None
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 0 <= value <= 10**7:
                problems.append(f"{name} must be a number of minutes; ignored")
                return None
            return value

        start = 1
        raw_start = (query.get("start") or "").strip()
        if raw_start:
            if _SEQ.fullmatch(raw_start):
                start = max(int(raw_start), 1)
            else:
                problems.append("start must be a stream sequence; ignored")
        return cls(
            reason=(query.get("reason") or "").strip()[:_FILTER_TEXT],
            event_type=(query.get("type") or "").strip()[:_FILTER_TEXT],
            min_age_minutes=minutes("min_age"),
            max_age_minutes=minutes("max_age"),
            start=start,
            problems=tuple(problems),
        )

    @property
    def active(self) -> bool:
        return bool(self.reason or self.event_type or self.min_age_minutes is not None
                    or self.max_age_minutes is not None)  # fmt: skip

    def matches(self, view: LetterView) -> bool:
        if self.reason and view.reason != self.reason:
            return False
        if self.event_type and view.event_type != self.event_type:
            return False
        if self.min_age_minutes is None and self.max_age_minutes is None:
            return True
        if view.age_seconds is None:
            return False
        age = view.age_seconds / 60
        if self.min_age_minutes is not None and age < self.min_age_minutes:
            return False
        return self.max_age_minutes is None or age <= self.max_age_minutes

    def query(self) -> dict[str, str]:
        """The filter as query parameters (for links and hidden form fields)."""
        values = {
            "reason": self.reason,
            "type": self.event_type,
            "min_age": _num(self.min_age_minutes),
            "max_age": _num(self.max_age_minutes),
        }
        return {k: v for k, v in values.items() if v}  # fmt: skip


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


@dataclass(frozen=True, slots=True)
class LetterView:
    """One dead letter as the page shows it (every text still to be escaped)."""

    seq: int
    reason: str
    event_type: str
    resource_id: str
    original_subject: str
    original_seq: int
    deliveries: int
    error_class: str
    error_message: str
    at: str
    age_seconds: float | None
    size: int
    truncated: bool
    preview: str
    headers: tuple[tuple[str, str], ...]


def _match(pattern: re.Pattern[bytes], data: bytes) -> str:
    found = pattern.search(data[:65536])
    return found.group(1).decode("utf-8", "replace") if found else ""


def view(letter: DeadLetter, *, now: datetime, preview_bytes: int) -> LetterView:
    """``letter`` for the page: its type and record found in the body, its age."""
    age: float | None = None
    try:
        age = max((now - parse_timestamp(letter.at)).total_seconds(), 0.0) if letter.at else None
    except EnvelopeError:
        age = None
    return LetterView(
        seq=letter.seq,
        reason=letter.reason,
        event_type=_match(_EVENT_TYPE, letter.data),
        resource_id=_match(_RESOURCE_ID, letter.data),
        original_subject=letter.original_subject,
        original_seq=letter.original_seq,
        deliveries=letter.deliveries,
        error_class=letter.error_class,
        error_message=letter.error_message,
        at=letter.at,
        age_seconds=age,
        size=len(letter.data),
        truncated=H_TRUNCATED in letter.headers,
        preview=letter.data[:preview_bytes].decode("utf-8", "replace"),
        headers=tuple(sorted(letter.headers.items())),
    )


def body_text(data: bytes) -> str:
    """A body for the letter's page: indented JSON when it is JSON of a sane size,
    else the text as it is (bytes that are not UTF-8 shown as U+FFFD)."""
    text = data.decode("utf-8", "replace")
    if len(data) <= PRETTY_LIMIT:
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):
            pass
    return text


@asynccontextmanager
async def _closing(letters: AsyncIterator[DeadLetter]) -> AsyncIterator[AsyncIterator[DeadLetter]]:
    """``letters``, closed when the block ends (a page stops reading early)."""
    try:
        yield letters
    finally:
        close = getattr(letters, "aclose", None)
        if close is not None:
            await close()


@dataclass(slots=True)
class LetterPage:
    """The letters of one page and what the filters can choose from."""

    letters: list[LetterView] = field(default_factory=list)
    reasons: set[str] = field(default_factory=set)
    event_types: set[str] = field(default_factory=set)
    scanned: int = 0
    next_start: int | None = None


async def letter_page(
    dead_letters: DeadLetters,
    chosen: LetterFilter,
    *,
    now: datetime,
    page_size: int,
    scan_limit: int,
    preview_bytes: int,
) -> LetterPage:
    """Scan from ``chosen.start`` (module doc); ``next_start`` is set when more remain."""
    page = LetterPage()
    read = 0
    async with _closing(dead_letters.letters(start_seq=chosen.start)) as letters:
        async for letter in letters:
            full = page.scanned >= scan_limit or len(page.letters) >= page_size
            if full or read > SCAN_BYTES:
                page.next_start = letter.seq
                break
            page.scanned += 1
            read += len(letter.data)
            shown = view(letter, now=now, preview_bytes=preview_bytes)
            page.reasons.add(shown.reason)
            if shown.event_type:
                page.event_types.add(shown.event_type)
            if chosen.matches(shown):
                page.letters.append(shown)
    return page


async def matching_seqs(
    dead_letters: DeadLetters, chosen: LetterFilter, *, now: datetime, limit: int, scan_limit: int
) -> tuple[list[int], bool]:
    """Sequences of the letters ``chosen`` matches now, oldest first, at most
    ``limit`` among the first ``scan_limit`` read; and whether more may match."""
    seqs: list[int] = []
    scanned = 0
    async with _closing(dead_letters.letters(start_seq=chosen.start)) as letters:
        async for letter in letters:
            if scanned >= scan_limit:
                return seqs, True
            scanned += 1
            if chosen.matches(view(letter, now=now, preview_bytes=0)):
                if len(seqs) >= limit:
                    return seqs, True
                seqs.append(letter.seq)
    return seqs, False


def parse_seqs(values: Sequence[str], *, limit: int) -> list[int]:
    """The distinct stream sequences of a form, in order; ValueError says what is wrong."""
    seqs: list[int] = []
    seen: set[int] = set()
    for raw in values:
        text = raw.strip()
        if not _SEQ.fullmatch(text) or int(text) < 1:
            raise ValueError(f"{raw[:40]!r} is not a dead letter's stream sequence")
        seq = int(text)
        if seq not in seen:
            seen.add(seq)
            seqs.append(seq)
    if len(seqs) > limit:
        raise ValueError(f"{len(seqs)} dead letters named; one action takes at most {limit}")
    return seqs
