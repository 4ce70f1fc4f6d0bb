"""The outbox row's stored body and the envelope the relay publishes from it.

An outbox row stores the envelope *once*: the fields the row has columns for —
:data:`COLUMN_FIELDS`: ``event_id``, ``event_type``, ``resource_type``,
``resource_id`` — live in those columns only, and the ``body`` column (JSONB) holds
every other field of the envelope (``payload``, ``producer``, ``origin``,
``occurred_at``, ``schema_version``, ``trace_id``, ``causation_id``).  Likewise the
``headers`` column holds only headers other than ``Nats-Msg-Id`` (the relay sets it
from ``event_id``), ``{}`` in the common case.  Why: the envelope's duplicated fields
and the stored message id were ~230 of the ~930 bytes of a row (docs/BENCHMARKS.md,
"Outbox bytes per row").

Contracts:

- :func:`stored_body` is what an outbox row's ``body`` column holds for an envelope
  (writers: :meth:`bridge.outbox.capture.Outbox.row_for`; the capture triggers build
  the same object in SQL, :mod:`bridge.outbox.triggers`).
- :func:`published_body` turns the stored body's text (PostgreSQL's rendering of the
  JSONB, as the claim returns it) and the column values back into the envelope's JSON
  bytes without decoding the body: the column fields are spliced in front of its
  members.  The result is the same JSON object as the envelope's own encoding (member
  order aside).  A body that is not a JSON object's text raises ``ValueError``.
- :func:`envelope_sql` is the SQL of a stored row's whole envelope (inspection, tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.schema import OUTBOX_COLUMN_FIELDS

#: Envelope fields held by the outbox row's columns, never in its ``body`` (a CHECK
#: constraint refuses a body holding one: :data:`bridge.schema.OUTBOX_BODY_CHECK`).
COLUMN_FIELDS = OUTBOX_COLUMN_FIELDS


def stored_body(envelope: Envelope) -> dict[str, Any]:
    """The ``body`` column's value for ``envelope``: its fields less :data:`COLUMN_FIELDS`."""
    body = envelope.to_dict()
    for name in COLUMN_FIELDS:
        del body[name]
    return body


def stored_headers(envelope: Envelope) -> dict[str, str]:
    """The ``headers`` column's value: the envelope's headers less ``Nats-Msg-Id``."""
    return {k: v for k, v in envelope.headers().items() if k != MSG_ID_HEADER}


#: A str as a JSON string, non-ASCII as is (as PostgreSQL renders JSONB), in C:
#: json.dumps with arguments builds an encoder per call, a visible cost per event.
_quote: Callable[[str], str] = encode_basestring


@functools.lru_cache(maxsize=1024)
def _name(value: str) -> str:
    # event and resource types are a handful of names: quote each once
    return _quote(value)


def published_body(
    body: str, *, event_id: str, event_type: str, resource_type: str, resource_id: str
) -> bytes:
    """The envelope's JSON bytes from a stored body's text and its row's columns."""
    if not body.startswith("{"):
        raise ValueError("an outbox row's body is not a JSON object")
    rest = body[1:].lstrip()
    separator = "" if rest.startswith("}") else ","
    head = (
        f'{{"event_id":"{event_id}","event_type":{_name(event_type)},'
        f'"resource_type":{_name(resource_type)},'
        f'"resource_id":{_quote(resource_id)}{separator}'
    )
    return (head + rest).encode()


def envelope_sql(alias: str = "") -> str:
    """SQL of an outbox row's whole envelope as JSONB: its column fields and its body
    (inspection, tests, and the layout before :mod:`bridge.migrations`'
    ``upgrade_outbox_body``)."""
    q = f"{alias}." if alias else ""
    fields = ", ".join(
        f"'{name}', {q}{name}{'::text' if name == 'event_id' else ''}" for name in COLUMN_FIELDS
    )
    return f"(jsonb_build_object({fields}) || {q}body)"
