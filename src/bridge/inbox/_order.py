"""Per-record order in the inbox: when a delivery waits for an earlier one of its record.

A *record* is ``(resource_type, resource_id)``.  :mod:`bridge.inbox._apply` asks
:meth:`RecordOrder.hold` before it runs a delivery's handler; a delivery that
must wait is *held back*: NAKed with that delay without running, its inbox record set
to ``failed`` with the attempt the claim counted taken back (a hold is not a handler
failure; ``attempts`` stays the number of handler runs).  Two rules:

- **In the batch**: once a delivery of record X failed or was held back, every later
  delivery of X in the batch is held back with the same delay, so it comes back
  after it.
- **Across batches, workers and replicas**: a delivery of X is held back while X has a
  ``failed`` inbox record with a LOWER stream sequence that waits for its redelivery
  (another event, not applied in this batch): the earlier event failed transiently
  in an earlier batch, or at another replica of the same durable, or was itself held
  back.  It comes back ``margin`` (``backoff[0]``) after the latest of those
  redeliveries is due (``retry_at``, stored with the ``failed`` record).  The
  ``failed`` records of a batch's records are read by the claim statement itself, from
  the snapshot before it took the batch's own records back
  (:func:`bridge.inbox._store.claim`, a partial index of ``failed`` records only).

What it takes, and where it stops (the README's "Guarantees" says the same):

- **Last allowed delivery**: a delivery on its last allowed delivery
  (``num_delivered >= max_deliver``) is never held back — it runs, so nothing is
  dead-lettered without its handler having run.  Each hold uses up one of the held
  delivery's deliveries; because it comes back just after the earlier one's
  redelivery, it needs at most as many holds as the earlier event has deliveries
  left, but an earlier redelivery that takes longer than ``margin`` to apply can cost
  one hold more, and an earlier event retried with a long custom ``Retry.delay``
  may outlast the budget: then the later event applies first (on its last delivery).
- **Settled earlier events stop holding**: applied (``processed``) or dead-lettered
  records are not ``failed``; a ``failed`` record whose ``retry_at`` passed more than
  ``ack_wait`` ago is taken for abandoned (the server gave up on it, e.g. after
  ``max_deliver`` with ``use_dlq=False``, or no consumer ran) and holds nothing back,
  so a lost earlier event cannot block its record for ever.
- **Only what the inbox saw**: an earlier event still in flight (claimed, not yet
  committed) at another replica is not known to be failing; a malformed body has no
  record and no key, so it holds nothing back; with ``use_inbox=False`` there are no
  records, so only the in-batch rule holds (plus per-record partitioning of workers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.inbox import _store as store
from bridge.transport.delivery import Received

HELD_IN_BATCH = "held back: an earlier event of this record failed in the same batch"
HELD_WAITING = "held back: an earlier event of this record waits for its redelivery"


@dataclass(slots=True)
class RecordOrder:
    """The order bookkeeping of one batch transaction (module doc)."""

    margin: float  # a held delivery comes back this long after the earlier one
    max_deliver: int  # a delivery this far is never held back
    # failed records still waiting for their redelivery, read before the claim
    waiting: dict[tuple[str, str], list[store.Waiting]] = field(default_factory=dict)
    # records blocked in this batch: resource key -> the NAK delay of what blocks them
    blocked: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls, config: BridgeConfig, waiting: dict[tuple[str, str], list[store.Waiting]]
    ) -> RecordOrder:
        """The order of one batch, given its records' waiting ``failed`` records
        (:func:`bridge.inbox._store.claim` reads them in the claim statement)."""
        return cls(margin=config.backoff[0], max_deliver=config.max_deliver, waiting=waiting)

    def hold(
        self, key: str, envelope: Envelope, delivery: Received, done: set[str]
    ) -> tuple[float, str] | None:
        """``(NAK delay, reason)`` when this delivery must wait (module doc), else ``None``.

        ``key`` is the delivery's resource key, ``done`` the event ids applied in
        this batch.  A held delivery blocks the later ones of its record in the batch.
        """
        if delivery.num_delivered >= self.max_deliver:
            return None  # its last chance: it runs
        if key in self.blocked:
            return self.blocked[key], HELD_IN_BATCH
        earlier = self.waiting.get((envelope.resource_type, envelope.resource_id))
        if not earlier:
            return None
        own = envelope.event_id.lower()
        applied = {event_id.lower() for event_id in done}
        due = [
            w.retry_in
            for w in earlier
            if w.stream_seq is not None
            and w.stream_seq < delivery.stream_seq
            and w.event_id != own
            and w.event_id not in applied
        ]
        if not due:
            return None
        delay = max(*due, 0.0) + self.margin
        self.block(key, delay)
        return delay, HELD_WAITING

    def block(self, key: str, delay: float) -> None:
        """Hold back the later deliveries of ``key`` in this batch (first delay wins)."""
        self.blocked.setdefault(key, delay)
