"""An inventory service that keeps its products in sync with a peer (``shop`` and
``warehouse``) through jetstream-bridge: :mod:`inventory.models` (the synced model),
:mod:`inventory.app` (the FastAPI application and its bridge)."""
