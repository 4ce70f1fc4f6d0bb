"""jetstream-bridge: keep services' databases in sync over NATS JetStream.

Importing this package has no side effects: no connections, no threads, no
module-level state.  Start with :class:`bridge.config.BridgeConfig` (or
:func:`bridge.env.configure_bidirectional`) and :class:`bridge.runtime.Bridge`.
"""

from bridge.config import BridgeConfig, Credentials
from bridge.env import configure_bidirectional
from bridge.envelope import Envelope
from bridge.errors import BridgeError, Reject, Retry
from bridge.presets import preset

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
