"""Library configuration: frozen dataclasses, validated once at construction.

Option names and defaults follow the Ruby gem (``nats_urls``, ``app_name``,
``destination_app``, ``stream_name``, ``auto_provision``, ``use_outbox``,
``use_inbox``, ``use_dlq``, ``max_deliver``, ``ack_wait``, ``backoff``,
``consumer_mode``, ``delivery_subject``, ``push_consumer_group``).  Durations are
float seconds; strings such as ``"30s"`` are accepted and parsed here, once.
Nothing here reads the environment (:mod:`bridge.env` does); presets are in
:mod:`bridge.presets`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from bridge._config_rules import check_stream_rules, default_inbox_prefix
from bridge._support.durations import parse_duration
from bridge.errors import ConfigError
from bridge.subjects import Subjects, validate_token

ConsumerMode = Literal["pull", "push"]
Mode = Literal["non_restrictive", "restrictive"]
CONSUMER_MODES: tuple[str, ...] = ("pull", "push")
DEFAULT_BACKOFF: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0, 60.0)
#: ``dlq_retention`` values: "never" = dead letters are kept until handled (replayed or
#: purged) whatever the stream's max_age; "stream" = they age out with the stream.
DLQ_RETENTIONS: tuple[str, ...] = ("never", "stream")
#: Width of the inbox's ``resource_id`` column (bridge.schema): the most ``max_id_length`` may be.
INBOX_ID_WIDTH = 255
#: The most ``consumer.max_json_depth`` may be (parsing recurses once per level).
MAX_JSON_DEPTH_LIMIT = 200
#: How far ahead of the receiver's clock an incoming version may be (bridge.routing.version_time).
DEFAULT_MAX_CLOCK_SKEW = 300.0
#: The current time, timezone-aware UTC (``BridgeConfig.clock``).
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The default :attr:`BridgeConfig.clock`: this host's time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to authenticate to NATS.  At most one of the auth methods may be set.

    ``repr()`` never shows secrets, so a config can be logged safely.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    inbox_prefix: str | None = None

    def __post_init__(self) -> None:
        methods = [
            name
            for name, value in (
                ("user/password", self.user),
                ("token", self.token),
                ("nkey_seed", self.nkey_seed),
                ("creds_file", self.creds_file),
            )
            if value
        ]
        if len(methods) > 1:
            raise ConfigError(f"credentials: choose one auth method, got {', '.join(methods)}")
        if self.user and not self.password:
            raise ConfigError("credentials: user is set but password is empty")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("credentials: tls_cert_file and tls_key_file go together")
        if self.inbox_prefix is not None and (
            not self.inbox_prefix or any(c in self.inbox_prefix for c in "*> ")
        ):
            raise ConfigError(f"credentials: inbox_prefix {self.inbox_prefix!r} is invalid")

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Outbox relay tuning.  See :mod:`bridge.outbox.relay` for the contract."""

    batch_size: int = 256
    poll_interval: float = 1.0
    lease: float = 30.0
    max_attempts: int = 20
    retry_base: float = 0.5
    retry_max: float = 60.0
    publish_timeout: float = 5.0
    max_in_flight: int = 256
    retention: float = 7 * 24 * 3600.0
    cleanup_interval: float = 300.0

    def __post_init__(self) -> None:
        _positive("relay.batch_size", self.batch_size)
        _positive("relay.max_attempts", self.max_attempts)
        _positive("relay.max_in_flight", self.max_in_flight)
        for name in ("poll_interval", "lease", "retry_base", "retry_max", "publish_timeout"):
            _positive(f"relay.{name}", getattr(self, name))
        if self.retry_max < self.retry_base:
            raise ConfigError("relay.retry_max must be >= relay.retry_base")


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Consumer tuning.  See :mod:`bridge.consumer` for the contract."""

    batch_size: int = 64
    fetch_timeout: float = 1.0
    concurrency: int = 1
    in_progress_interval: float | None = None
    #: Settled inbox records older than this are deleted (see :mod:`bridge.inbox.retention`);
    #: the default matches ``stream_max_age``, how long the stream may replay a message.
    inbox_retention: float = 7 * 24 * 3600.0
    inbox_cleanup_interval: float = 300.0
    #: Accept an ``inbox_retention`` shorter than ``stream_max_age`` (refused otherwise):
    #: only for handlers that are idempotent on their own, e.g. last-writer-wins.
    allow_short_inbox_retention: bool = False
    #: Limits on an incoming body (:mod:`bridge._envelope_limits`): a larger body, deeper
    #: JSON nesting or a longer id is dead-lettered ``malformed`` on its first delivery.
    #: The server's ``max_payload`` (1 MiB by default) already bounds what can arrive.
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_id_length: int = 255
    #: Longest a batch's database work may take (the inbox transaction, the dead-letter
    #: bookkeeping); past it the batch is rolled back and NAKed, and a dead connection is
    #: discarded (:class:`bridge.deadline.Deadline`).  ``None``: unbounded.
    batch_timeout: float | None = 120.0

    def __post_init__(self) -> None:
        _positive("consumer.batch_size", self.batch_size)
        if self.batch_timeout is not None:
            _positive("consumer.batch_timeout", self.batch_timeout)
        _positive("consumer.fetch_timeout", self.fetch_timeout)
        _positive("consumer.concurrency", self.concurrency)
        _positive("consumer.inbox_retention", self.inbox_retention)
        _positive("consumer.inbox_cleanup_interval", self.inbox_cleanup_interval)
        _positive("consumer.max_body_bytes", self.max_body_bytes)
        # An envelope is an object holding a payload object (depth 2); far below the
        # interpreter's recursion limit, so parsing an accepted body can never recurse out.
        if not 2 <= self.max_json_depth <= MAX_JSON_DEPTH_LIMIT:
            raise ConfigError(
                f"consumer.max_json_depth must be between 2 and {MAX_JSON_DEPTH_LIMIT}, "
                f"got {self.max_json_depth!r}"
            )
        if not 1 <= self.max_id_length <= INBOX_ID_WIDTH:
            raise ConfigError(
                f"consumer.max_id_length must be between 1 and {INBOX_ID_WIDTH} (the width "
                f"of the inbox's resource_id column), got {self.max_id_length!r}"
            )


@dataclass(frozen=True, slots=True)
class ReconcileOptions:
    """Anti-entropy reconciliation.  See :mod:`bridge.reconcile.reconciler` for the contract.

    ``interval``: seconds between periodic passes; ``None`` or 0 = off (the default;
    ``bridge reconcile`` runs a pass on demand).  ``responder``: answer the peer's
    requests (needs the app's synced models, see :class:`~bridge.runtime.Bridge`).
    ``max_concurrent_requests``: peer requests the responder serves at once (each holds
    a database connection); more are refused "busy" at once.  ``statement_timeout``:
    how long one request's SQL may run on the responder
    (:mod:`bridge.reconcile.responder`).
    """

    interval: float | str | None = None
    request_timeout: float = 10.0
    leaf_rows: int = 128
    responder: bool = True
    max_concurrent_requests: int = 4
    statement_timeout: float = 10.0

    def __post_init__(self) -> None:
        interval = self.interval
        if interval is not None:
            interval = parse_duration(interval, name="reconcile.interval")
            if interval < 0:
                raise ConfigError("reconcile.interval must not be negative")
            object.__setattr__(self, "interval", interval or None)
        object.__setattr__(
            self,
            "request_timeout",
            parse_duration(self.request_timeout, name="reconcile.request_timeout"),
        )
        _positive("reconcile.request_timeout", self.request_timeout)
        _positive("reconcile.leaf_rows", self.leaf_rows)
        object.__setattr__(
            self,
            "statement_timeout",
            parse_duration(self.statement_timeout, name="reconcile.statement_timeout"),
        )
        # PostgreSQL takes whole milliseconds up to 2^31 - 1; 0 would mean "no limit".
        if not 0.001 <= self.statement_timeout <= 2_000_000:
            raise ConfigError(
                "reconcile.statement_timeout must be between 1ms and 2,000,000s, "
                f"got {self.statement_timeout!r}"
            )
        count = self.max_concurrent_requests
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError(
                f"reconcile.max_concurrent_requests must be an integer, got {count!r}"
            )
        _positive("reconcile.max_concurrent_requests", self.max_concurrent_requests)

    @property
    def interval_seconds(self) -> float | None:
        """Seconds between periodic passes, ``None`` when off (strings parsed at init)."""
        return float(self.interval) if self.interval else None


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Complete configuration of one side of a synced pair.

    Construct with keyword arguments; duration fields accept strings ("30s").
    Invalid values raise :class:`~bridge.errors.ConfigError` immediately.
    """

    app_name: str
    destination_app: str
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream_name: str = "sync-stream"
    auto_provision: bool = True
    use_outbox: bool = True
    use_inbox: bool = True
    use_dlq: bool = True
    max_deliver: int = 5
    ack_wait: float = 30.0
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    consumer_mode: ConsumerMode = "pull"
    delivery_subject: str | None = None
    push_consumer_group: str | None = None
    credentials: Credentials = field(default_factory=Credentials)
    duplicate_window: float = 120.0
    stream_replicas: int = 1
    stream_max_age: float = 7 * 24 * 3600.0
    stream_max_bytes: int = -1
    connect_timeout: float = 2.0
    reconnect_wait: float = 1.0
    reconnect_wait_max: float = 10.0
    enable_consumer: bool = True
    enable_relay: bool = True
    relay: RelayOptions = field(default_factory=RelayOptions)
    consumer: ConsumerOptions = field(default_factory=ConsumerOptions)
    reconcile: ReconcileOptions = field(default_factory=ReconcileOptions)
    #: How long dead letters are kept (see :data:`DLQ_RETENTIONS`, :mod:`bridge.routing.dlq`).
    dlq_retention: str = "never"
    #: An incoming version (``occurred_at``, a record's ``updated_at``) later than the
    #: clock plus this is dead-lettered ``future_version`` (:mod:`bridge.routing.version_time`).
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW
    #: Systems whose changes this side applies (an envelope's ``origin`` and ``producer``);
    #: ``app_name`` and ``destination_app`` are always in it.  Others: ``unknown_origin``.
    known_origins: frozenset[str] = frozenset()
    #: The time the rules above compare with; injectable (tests skew it), never patched.
    clock: Clock = field(default=system_clock, repr=False, compare=False)
    #: NATS PINGs: a dead link is noticed within ping_interval * (max_outstanding_pings + 1)
    ping_interval: float = 5.0
    max_outstanding_pings: int = 2

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise values once, here
        if not self.use_outbox:
            raise ConfigError(
                "use_outbox=False is not supported: the bridge publishes only through the "
                "transactional outbox (publishing after the commit, the gem's way, loses the "
                "event when the process dies in between).  Keep use_outbox=True; to run a "
                "process that does not publish, set enable_relay=False (another process's "
                "relay publishes its outbox rows)"
            )
        validate_token(self.app_name, name="app_name")
        validate_token(self.destination_app, name="destination_app")
        validate_token(self.stream_name, name="stream_name")
        Subjects(self.app_name, self.destination_app)
        urls = (self.nats_urls,) if isinstance(self.nats_urls, str) else tuple(self.nats_urls)
        urls = tuple(u.strip() for part in urls for u in part.split(",") if u.strip())
        if not urls:
            raise ConfigError("nats_urls must name at least one server")
        for url in urls:
            if "://" not in url:
                raise ConfigError(f"nats_urls: {url!r} needs a scheme, e.g. nats://host:4222")
        set_(self, "nats_urls", urls)
        if self.consumer_mode not in CONSUMER_MODES:
            raise ConfigError(f"consumer_mode must be 'pull' or 'push', got {self.consumer_mode!r}")
        if not isinstance(self.max_deliver, int) or self.max_deliver < 1:
            raise ConfigError(f"max_deliver must be a positive integer, got {self.max_deliver!r}")
        for name in (
            "ack_wait",
            "duplicate_window",
            "stream_max_age",
            "connect_timeout",
            "reconnect_wait",
            "reconnect_wait_max",
        ):
            set_(self, name, parse_duration(getattr(self, name), name=name))
        if self.ack_wait <= 0:
            raise ConfigError("ack_wait must be greater than zero")
        if self.duplicate_window <= 0:
            raise ConfigError("duplicate_window must be greater than zero")
        backoff = _as_durations(self.backoff, name="backoff")
        if not backoff:
            raise ConfigError("backoff must list at least one delay, e.g. ('1s', '5s')")
        if len(backoff) > self.max_deliver:
            raise ConfigError(
                f"backoff has {len(backoff)} steps but max_deliver is {self.max_deliver}: "
                "JetStream requires len(backoff) <= max_deliver"
            )
        set_(self, "backoff", backoff)
        if self.stream_replicas not in (1, 3, 5):
            raise ConfigError(f"stream_replicas must be 1, 3 or 5, got {self.stream_replicas}")
        set_(self, "ping_interval", parse_duration(self.ping_interval, name="ping_interval"))
        _positive("ping_interval", self.ping_interval)
        _positive("max_outstanding_pings", self.max_outstanding_pings)
        if self.delivery_subject is not None and not self.delivery_subject.strip():
            raise ConfigError("delivery_subject must not be blank")
        if self.push_consumer_group is not None:
            validate_token(self.push_consumer_group, name="push_consumer_group")
        if self.dlq_retention not in DLQ_RETENTIONS:
            raise ConfigError(
                f"dlq_retention must be 'never' (kept until handled) or 'stream' (expire "
                f"with the stream's max_age), got {self.dlq_retention!r}"
            )
        check_stream_rules(self)
        set_(self, "max_clock_skew", parse_duration(self.max_clock_skew, name="max_clock_skew"))
        if self.max_clock_skew <= 0:
            raise ConfigError("max_clock_skew must be greater than zero, e.g. '5m'")
        set_(self, "known_origins", _known_origins(self))
        if not callable(self.clock):
            raise ConfigError(f"clock must be a callable returning the time, got {self.clock!r}")

    # -- derived names ---------------------------------------------------------------
    @property
    def subjects(self) -> Subjects:
        return Subjects(self.app_name, self.destination_app)

    @property
    def deliver_subject(self) -> str:
        """Push deliver subject (explicit ``delivery_subject`` or the default)."""
        return self.delivery_subject or self.subjects.deliver_subject

    @property
    def deliver_group(self) -> str:
        """Push queue group (explicit ``push_consumer_group`` or the default)."""
        return self.push_consumer_group or self.subjects.deliver_group

    @property
    def inbox_prefix(self) -> str:
        """Reply-inbox prefix of this app's connections: ``credentials.inbox_prefix``, or
        ``_INBOX_<app_name>`` — private to the app, so the generated permissions never
        share an inbox between two apps (:mod:`bridge.provisioning.permissions`)."""
        return self.credentials.inbox_prefix or default_inbox_prefix(self.app_name)

    def backoff_for(self, attempt: int) -> float:
        """Delay before redelivering after the ``attempt``-th failed delivery (1-based)."""
        index = min(max(attempt, 1), len(self.backoff)) - 1
        return self.backoff[index]

    @property
    def retry_budget(self) -> float:
        """Seconds a delivery that keeps failing transiently is retried before it is
        dead-lettered: the NAK delays of deliveries 1 .. ``max_deliver - 1``."""
        return sum(self.backoff_for(n) for n in range(1, self.max_deliver))

    def with_(self, **changes: Any) -> BridgeConfig:
        """Return a copy with ``changes`` applied and validated."""
        return replace(self, **changes)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be greater than zero, got {value!r}")


def _known_origins(config: BridgeConfig) -> frozenset[str]:
    """``known_origins`` as given (names, or one comma-separated string), plus both apps."""
    given: Iterable[str] | str = config.known_origins
    if isinstance(given, str):
        given = [name for name in given.replace(",", " ").split() if name]
    names = set(given) | {config.app_name, config.destination_app}
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"known_origins must name systems (strings), got {name!r}")
        validate_token(name, name="known_origins")
    return frozenset(names)


def _as_durations(values: Iterable[str | float] | str, *, name: str) -> tuple[float, ...]:
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    return tuple(parse_duration(v, name=f"{name}[{i}]") for i, v in enumerate(values))
