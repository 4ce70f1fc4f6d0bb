"""The event catalog of one app: an AsyncAPI 3.0.0 document built from its config (the
subjects, :mod:`bridge.subjects`) and its :class:`~bridge.event_schemas.EventSchemas`.

What the document holds:

- **servers**: the config's NATS URLs, host and port only — credentials in a URL never
  reach the document;
- **channels**: ``published`` (``{app}.sync.{peer}``: the version of each declared type
  producers stamp), ``consumed`` (``{peer}.sync.{app}``: every version this app
  accepts) and, with ``use_dlq``, ``deadLetters`` (``{app}.sync.dlq``);
- **operations**: ``publishEvents`` (send), ``consumeEvents`` (receive; in push mode
  with the NATS queue group) and ``deadLetter`` (send);
- **components.messages**: one message per declared type and version, keyed
  ``<type>.v<n>``; its payload is the whole envelope (:mod:`bridge.catalog.wire`)
  whose ``payload`` field refers to ``components.schemas["<type>.v<n>"]``, the
  declared JSON Schema (``{"type": "object"}`` and a note when none was declared).
  Extensions ``x-bridge-type``, ``x-bridge-schema-version`` and ``x-bridge-published``
  (the version producers stamp; ``x-bridge-no-schema`` marks a placeholder) let a
  reader — ``bridge schema diff`` — compare catalogs without guessing from names.

A type declared per resource (``"user"``) covers every event of that resource
(``user.created``, ``user.updated``, ``user.deleted``, ...) except the exact event
types declared on their own, which the message's ``event_type`` schema excludes.

Limits: types nobody declared are published unversioned (``schema_version`` 1, no
validation) and are not listed; the reconciliation request subjects (core NATS
request/reply, not the stream) are not described.  The document has no timestamp:
the same config and declarations give the same document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from bridge._envelope_limits import EnvelopeLimits
from bridge.catalog.wire import (
    dead_letter_headers_schema,
    envelope_schema,
    publish_headers_schema,
)
from bridge.config import BridgeConfig
from bridge.errors import ConfigError
from bridge.event_schemas import DeclaredType, EventSchemas

__all__ = [
    "ASYNCAPI_VERSION",
    "X_NO_SCHEMA",
    "X_PUBLISHED",
    "X_SCHEMA_VERSION",
    "X_TYPE",
    "asyncapi",
    "message_key",
]

ASYNCAPI_VERSION = "3.0.0"
X_TYPE = "x-bridge-type"
X_SCHEMA_VERSION = "x-bridge-schema-version"
X_PUBLISHED = "x-bridge-published"
#: Marks the placeholder payload schema of a version declared without one.
X_NO_SCHEMA = "x-bridge-no-schema"
_NATS_BINDING_VERSION = "0.1.0"
_HEADERS_REF = "#/components/schemas/publishHeaders"
_NO_SCHEMA = {
    "type": "object",
    "description": "No JSON Schema declared for this version: the validator alone decides.",
    X_NO_SCHEMA: True,
}


def asyncapi(
    config: BridgeConfig,
    schemas: EventSchemas,
    *,
    title: str | None = None,
    version: str = "1.0.0",
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``config.app_name`` (module doc), as JSON data.

    ``version`` is the application's API version (``info.version``).  Raises
    :class:`~bridge.errors.ConfigError` when ``schemas`` has a broken version chain
    (:meth:`~bridge.event_schemas.EventSchemas.check`).
    """
    schemas.check()
    subjects = config.subjects
    declared = schemas.declarations()
    exact = sorted(d.type_ for d in declared if d.is_event_type)
    limits = EnvelopeLimits.from_options(config.consumer)
    messages: dict[str, Any] = {}
    payloads: dict[str, Any] = {"publishHeaders": publish_headers_schema(config)}
    for item in declared:
        for number in item.versions:
            key = message_key(item.type_, number)
            payloads[key] = _payload_schema(item, number, key)
            messages[key] = _message(item, number, key, exact, limits)
    published = {
        key: _ref("components", "messages", key)
        for key, message in messages.items()
        if message[X_PUBLISHED]
    }
    channels: dict[str, Any] = {
        "published": {
            "address": subjects.publish,
            "title": f"{config.app_name} → {config.destination_app}",
            "description": "Every change of a synced record, in the version producers stamp.",
            "messages": published,
        },
        "consumed": {
            "address": subjects.consume,
            "title": f"{config.destination_app} → {config.app_name}",
            "description": "What this app accepts from its peer: every declared version "
            "(older ones are upcast to the current one before the handler runs).",
            "messages": {key: _ref("components", "messages", key) for key in messages},
        },
    }
    operations: dict[str, Any] = {
        "publishEvents": _operation("send", "published", published, "The outbox relay."),
        "consumeEvents": _consume_operation(config, messages),
    }
    if config.use_dlq:
        payloads["deadLetterHeaders"] = dead_letter_headers_schema(config)
        channels["deadLetters"] = {
            "address": subjects.dlq,
            "title": f"{config.app_name} dead letters",
            "description": "Deliveries this app could not apply, stored with why.",
            "messages": {"deadLetter": _ref("components", "messages", "deadLetter")},
        }
        messages["deadLetter"] = _dead_letter_message()
        operations["deadLetter"] = _operation(
            "send",
            "deadLetters",
            ["deadLetter"],
            "The consumer, for a delivery it cannot apply (replay: `bridge dlq replay`).",
        )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:jetstream-bridge:{config.app_name}",
        "info": {
            "title": title or f"{config.app_name} events",
            "version": version,
            "description": description
            or (
                f"Events {config.app_name} exchanges with {config.destination_app} over NATS "
                f"JetStream (stream `{config.stream_name}`)."
            ),
        },
        "servers": _servers(config.nats_urls),
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": payloads},
    }


def message_key(type_: str, version: int) -> str:
    """The key of a type's version in ``components.messages`` and ``components.schemas``."""
    return f"{type_}.v{version}"


def _ref(*parts: str) -> dict[str, str]:
    # JSON Pointer escaping: keys here never hold "~" or "/" (subject tokens cannot)
    return {"$ref": "#/" + "/".join(parts)}


def _payload_schema(item: DeclaredType, number: int, key: str) -> dict[str, Any]:
    schema = item.json_schemas.get(number)
    if schema is None:
        return dict(_NO_SCHEMA)
    rebased = _rebase(dict(schema), f"#/components/schemas/{key}")
    assert isinstance(rebased, dict)
    return rebased


def _rebase(node: Any, base: str) -> Any:
    """Local ``$ref``s of a schema (``#/$defs/X``) rewritten to where the schema now lives."""
    if isinstance(node, dict):
        return {
            k: (base + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#") else
                _rebase(v, base))
            for k, v in node.items()
        }  # fmt: skip
    if isinstance(node, list):
        return [_rebase(v, base) for v in node]
    return node


def _message(
    item: DeclaredType, number: int, key: str, exact: list[str], limits: EnvelopeLimits
) -> dict[str, Any]:
    if item.is_event_type:
        event_type: dict[str, Any] = {"type": "string", "const": item.type_}
        resource_type: dict[str, Any] = {"type": "string", "minLength": 1}
        covers = f"`{item.type_}` events"
    else:
        event_type = {
            "type": "string",
            "examples": [f"{item.type_}.{action}" for action in ("created", "updated", "deleted")],
        }
        if exact:
            event_type["not"] = {"enum": exact}
        resource_type = {"type": "string", "const": item.type_}
        covers = f"every `{item.type_}` event" + (f" except {', '.join(exact)}" if exact else "")
    published = number == item.publish_version
    return {
        "name": key,
        "title": f"{item.type_} v{number}",
        "summary": f"{covers}, payload schema version {number}"
        + (" (what producers stamp)" if published else ""),
        "contentType": "application/json",
        "headers": {"$ref": _HEADERS_REF},
        "payload": envelope_schema(
            limits,
            schema_version=number,
            payload=_ref("components", "schemas", key),
            event_type=event_type,
            resource_type=resource_type,
        ),
        "correlationId": {"location": "$message.payload#/event_id"},
        X_TYPE: item.type_,
        X_SCHEMA_VERSION: number,
        X_PUBLISHED: published,
    }


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "deadLetter",
        "title": "Dead letter",
        "summary": "The original message, body and headers unchanged, with x-dlq-* headers.",
        "contentType": "application/json",
        "headers": {"$ref": "#/components/schemas/deadLetterHeaders"},
        "payload": {
            "description": "The original body as delivered: an envelope, or for reason "
            "`malformed` whatever arrived (cut to fit when x-dlq-truncated is set)."
        },
    }


def _operation(
    action: str, channel: str, messages: Iterable[str], description: str
) -> dict[str, Any]:
    return {
        "action": action,
        "channel": _ref("channels", channel),
        "description": description,
        "messages": [_ref("channels", channel, "messages", key) for key in messages],
    }


def _consume_operation(config: BridgeConfig, messages: dict[str, Any]) -> dict[str, Any]:
    durable = config.subjects.durable
    if config.consumer_mode == "push":
        how = (
            f"Push consumer `{durable}`, delivered on `{config.deliver_subject}` to queue "
            f"group `{config.deliver_group}`"
        )
    else:
        how = f"Pull consumer `{durable}`"
    operation = _operation(
        "receive",
        "consumed",
        messages,
        f"{how}; explicit ack after the handler's commit, at most {config.max_deliver} "
        "attempts, then a dead letter.",
    )
    if config.consumer_mode == "push":
        operation["bindings"] = {
            "nats": {"queue": config.deliver_group, "bindingVersion": _NATS_BINDING_VERSION}
        }
    return operation


def _servers(urls: tuple[str, ...]) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for index, url in enumerate(urls, start=1):
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"nats_urls[{index - 1}] has an invalid port") from exc
        if not parts.hostname:
            raise ConfigError(f"nats_urls[{index - 1}] has no host")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        servers[f"nats-{index}"] = {
            "host": host if port is None else f"{host}:{port}",
            "protocol": parts.scheme or "nats",
        }
    return servers
