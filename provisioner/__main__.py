"""``python -m provisioner`` — see :mod:`provisioner.cli`."""

from __future__ import annotations

import sys

from provisioner.cli import main as _main


def main() -> None:
    """Console-script entry point: exit with the command's code."""
    sys.exit(_main())


if __name__ == "__main__":
    main()
