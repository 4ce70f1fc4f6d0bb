"""jetstream-bridge: keep services' databases in sync over NATS JetStream.

Importing this package has no side effects: no connections, no threads, no
module-level state.  Start with :class:`bridge.config.BridgeConfig` (or
:func:`bridge.config.configure_bidirectional`) and :class:`bridge.runtime.Bridge`.
"""

from bridge.config import BridgeConfig, Credentials, configure_bidirectional, preset
from bridge.envelope import Envelope
from bridge.errors import BridgeError, Reject, Retry

__all__ = [
    "BridgeConfig",
    "BridgeError",
    "Credentials",
    "Envelope",
    "Reject",
    "Retry",
    "configure_bidirectional",
    "preset",
]
__version__ = "0.1.0"
