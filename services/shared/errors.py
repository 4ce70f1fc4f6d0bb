"""Errors the API turns into JSON responses (see :mod:`services.shared.app`).

These belong to the services, not to the library: :mod:`bridge.errors` is the
library's hierarchy, and the library never raises these.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of the API's expected failures; ``status_code`` is the HTTP status."""

    status_code = 400

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ServiceError):
    status_code = 404


class InvalidInput(ServiceError):
    """A request that is well-formed but breaks a rule (duplicate domain, unknown org)."""

    status_code = 422

    @classmethod
    def field(cls, field: str, message: str, kind: str) -> InvalidInput:
        return cls(
            f"{field}: {message}", details=[{"field": field, "message": message, "type": kind}]
        )


class StateConflict(ServiceError):
    """The request conflicts with the record's current state (e.g. org still has users)."""

    status_code = 409
