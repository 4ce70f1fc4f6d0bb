"""System A's worker process: ``python -m services.system_a.worker`` (relay + consumer, no HTTP)."""

from __future__ import annotations

import sys

from services.shared.worker import main
from services.system_a.main import SystemASettings

if __name__ == "__main__":
    sys.exit(main(SystemASettings()))
