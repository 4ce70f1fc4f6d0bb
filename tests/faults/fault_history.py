"""The acknowledged history of a fault scenario: every API write the load made, and its fate.

Each write is one HTTP request to one service instance.  Its ``outcome`` is what the
client can honestly say about it:

- ``acked``: a 2xx answer.  The change committed; the checker demands it (or a later
  version of the same record) on both sides and its event in the stream.
- ``rejected``: a 4xx answer, or the connection was refused before the request was
  sent.  Nothing committed.
- ``indeterminate``: the request may or may not have committed — a 5xx, a timeout, or
  the connection died after the request was sent (the process was killed mid-request).
  The checker allows such a write to exist or not, but if it exists it must be whole
  and identical on both sides.

Records are owned by one load worker, which writes them one request at a time, so the
writes of one record form a linear history in real time: the newest acknowledged write
of a record is its expected final state, unless an indeterminate write came after it.

With a *shared* load (:class:`fault_load.Load` ``shared=True``) every worker writes any
record on either side, so writes of one record are concurrent.  Then each update also
records ``applied_before``: the record's version (``updated_at``, ``origin``) that its
side returned just before the write (a GET on the same instance).  The side had applied
at least that version when it acknowledged the write, which the checker's
last-writer-wins rule uses (:mod:`fault_lww`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["acked", "rejected", "indeterminate"]
Kind = Literal["create", "update"]
Resource = Literal["organization", "user"]

#: The natural key of each resource: how an indeterminate create is recognised later.
NATURAL_KEYS: dict[str, str] = {"organization": "domain", "user": "email"}


def matches(row: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Whether a stored row holds what a request (or a response) said, field by field.

    An id the load sent as decimal text (``"organization_id": "2481..."``: record ids
    are kept as text in the history) matches the integer the API stored: the services'
    ids are integers and their API takes either form.  Before this rule an
    indeterminate user create could never explain the row it made.
    """
    return all(_same(row.get(name), value) for name, value in fields.items())


def _same(stored: Any, sent: Any) -> bool:
    if stored == sent:
        return True
    return (
        isinstance(stored, int)
        and not isinstance(stored, bool)
        and isinstance(sent, str)
        and sent.isdigit()
        and int(sent) == stored
    )


@dataclass(frozen=True, slots=True)
class Write:
    """One API write and what the client saw."""

    seq: int
    worker: int
    app: str
    instance: str
    kind: Kind
    resource: Resource
    record_id: str | None
    request: dict[str, Any]
    outcome: Outcome
    status: int | None
    response: dict[str, Any] | None
    error: str | None
    started: float
    finished: float
    #: Shared load: the version its side had applied before this update (module doc).
    applied_before: dict[str, Any] | None = None

    @property
    def natural_key(self) -> str | None:
        value = self.request.get(NATURAL_KEYS[self.resource])
        return str(value) if value is not None else None


@dataclass
class History:
    """Append-only list of writes (one event loop appends; no lock needed)."""

    writes: list[Write] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def record(
        self,
        *,
        worker: int,
        app: str,
        instance: str,
        kind: Kind,
        resource: Resource,
        record_id: str | None,
        request: dict[str, Any],
        outcome: Outcome,
        status: int | None,
        response: dict[str, Any] | None,
        error: str | None,
        started: float,
        applied_before: dict[str, Any] | None = None,
    ) -> Write:
        if kind == "create" and outcome == "acked" and response is not None:
            record_id = str(response["id"])
        write = Write(
            seq=len(self.writes),
            worker=worker,
            app=app,
            instance=instance,
            kind=kind,
            resource=resource,
            record_id=record_id,
            request=request,
            outcome=outcome,
            status=status,
            response=response,
            error=error,
            started=started,
            finished=time.monotonic(),
            applied_before=applied_before,
        )
        self.writes.append(write)
        return write

    def by_outcome(self, outcome: Outcome) -> list[Write]:
        return [w for w in self.writes if w.outcome == outcome]

    def acked_count(self, app: str | None = None) -> int:
        return sum(1 for w in self.writes if w.outcome == "acked" and app in (None, w.app))

    def indeterminate_count(self, app: str | None = None) -> int:
        return sum(1 for w in self.writes if w.outcome == "indeterminate" and app in (None, w.app))

    def records(self) -> dict[tuple[str, str], list[Write]]:
        """Writes per known record ``(resource, id)``, in the order they were made."""
        out: dict[tuple[str, str], list[Write]] = {}
        for write in self.writes:
            if write.record_id is not None:
                out.setdefault((write.resource, write.record_id), []).append(write)
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for the result file: per outcome, per kind, per app, per status."""
        outcomes = Counter(w.outcome for w in self.writes)
        kinds = Counter(f"{w.kind}_{w.resource}" for w in self.writes if w.outcome == "acked")
        apps = Counter(w.app for w in self.writes if w.outcome == "acked")
        statuses = Counter(str(w.status) for w in self.writes)
        span = max((w.finished for w in self.writes), default=self.started) - self.started
        return {
            "writes": len(self.writes),
            "acked": outcomes["acked"],
            "rejected": outcomes["rejected"],
            "indeterminate": outcomes["indeterminate"],
            "acked_by_kind": dict(sorted(kinds.items())),
            "acked_by_app": dict(sorted(apps.items())),
            "statuses": dict(sorted(statuses.items())),
            "duration_seconds": round(span, 2),
        }

    def dump(self) -> list[dict[str, Any]]:
        return [asdict(w) for w in self.writes]
