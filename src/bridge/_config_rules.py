"""Rules that tie configuration options to the stream and inbox they produce (pure).

:class:`~bridge.config.BridgeConfig` calls :func:`check_stream_rules` once, at
construction; each rule raises :class:`~bridge.errors.ConfigError` naming the
options and what would go wrong.

- **Inbox retention covers the stream.**  A message stays in the stream for
  ``stream_max_age`` and can be delivered again during that time (a consumer
  re-created or reset, a relay republishing after a crash).  The inbox record is
  what makes the second delivery a duplicate, so ``consumer.inbox_retention`` must
  be at least ``stream_max_age`` (``0`` = messages kept for ever: no retention
  covers it).  Handlers that are idempotent on their own (last-writer-wins) may opt
  out with ``consumer.allow_short_inbox_retention``.
- **Stream limits never drop messages.**  ``stream_max_bytes`` is ``-1``
  (unlimited) or positive.  The stream is provisioned with ``discard: new``
  (:mod:`bridge.provisioning.specs`): when a size limit is reached the server refuses new
  publishes (the relay keeps the outbox rows and retries; a dead letter that cannot
  be stored leaves its delivery un-acked) instead of deleting the oldest messages —
  which, with ``discard: old``, could be events no consumer has applied yet.
  ``stream_max_age`` still expires messages by age: that is the documented limit of
  how long a consumer may stay down.
- **Reply inboxes are private.**  An app's connection uses ``_INBOX_<app>`` unless
  ``credentials.inbox_prefix`` says otherwise, and its generated permissions grant
  exactly that prefix (:mod:`bridge.provisioning.permissions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.errors import ConfigError

if TYPE_CHECKING:  # only for annotations: bridge.config imports this module
    from bridge.config import BridgeConfig

#: NATS's conventional reply-inbox prefix; each app's default is ``_INBOX_<app>``.
INBOX_PREFIX_BASE = "_INBOX"
UNLIMITED = -1


def default_inbox_prefix(app_name: str) -> str:
    """The reply-inbox prefix of ``app_name``'s connections unless configured otherwise."""
    return f"{INBOX_PREFIX_BASE}_{app_name}"


def check_stream_rules(config: BridgeConfig) -> None:
    """Raise :class:`ConfigError` when ``config`` breaks a rule of the module doc."""
    if config.stream_max_age < 0:
        raise ConfigError("stream_max_age must be >= 0 (0 keeps messages for ever)")
    if not isinstance(config.stream_max_bytes, int) or (
        config.stream_max_bytes != UNLIMITED and config.stream_max_bytes <= 0
    ):
        raise ConfigError(
            f"stream_max_bytes must be -1 (unlimited) or a positive number of bytes, "
            f"got {config.stream_max_bytes!r}"
        )
    _check_inbox_retention(config)


def _check_inbox_retention(config: BridgeConfig) -> None:
    opts = config.consumer
    if not config.use_inbox or opts.allow_short_inbox_retention:
        return
    hint = (
        "; raise consumer.inbox_retention, or set consumer.allow_short_inbox_retention=True "
        "if every handler is idempotent on its own (e.g. last-writer-wins)"
    )
    if config.stream_max_age == 0:
        raise ConfigError(
            "stream_max_age is 0: the stream keeps messages for ever, so no "
            "consumer.inbox_retention covers a message delivered again after its inbox "
            "record was purged (it would be applied twice); set stream_max_age" + hint
        )
    if opts.inbox_retention < config.stream_max_age:
        raise ConfigError(
            f"consumer.inbox_retention ({opts.inbox_retention:g}s) is shorter than "
            f"stream_max_age ({config.stream_max_age:g}s): a message the stream still holds "
            "can be delivered again (consumer re-created or reset, a republish) after its "
            "inbox record was purged, and would be applied twice" + hint
        )
