"""The event catalog: what an app publishes and accepts, as an AsyncAPI 3.0.0 document,
and whether a new catalog (or payload schema) is compatible with an old one.

- :func:`asyncapi` (:mod:`bridge.catalog.document`): the document of one app from its
  config and :class:`~bridge.event_schemas.EventSchemas` — served at ``/asyncapi.json``
  by :func:`bridge.integrations.fastapi.bridge_router` (``asyncapi=True``).
- :func:`compare` (:mod:`bridge.catalog.diff`): the changes from an old document to a
  new one and whether each keeps consumers working — ``bridge schema diff OLD NEW``.

Importing this package connects to nothing (docs/OPERATIONS.md, "Event catalog").  Like
``bridge.testing``, this package's ``__init__`` re-exports: ``bridge.catalog.asyncapi``
is the function applications call.
"""

from bridge.catalog.document import ASYNCAPI_VERSION, asyncapi

__all__ = ["ASYNCAPI_VERSION", "asyncapi"]
