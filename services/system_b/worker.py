"""System B's worker process: ``python -m services.system_b.worker`` (relay + consumer, no HTTP)."""

from __future__ import annotations

import sys

from services.shared.worker import main
from services.system_b.main import SystemBSettings

if __name__ == "__main__":
    sys.exit(main(SystemBSettings()))
