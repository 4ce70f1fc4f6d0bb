"""``bridge-provision``: a thin entry point over the one command line that lives in
``bridge`` (:mod:`bridge.cli.provision`; plan, apply and verify are those of
``bridge provision``)."""

from __future__ import annotations

from bridge.cli.provision import main, main_async

__all__ = ["main", "main_async"]
