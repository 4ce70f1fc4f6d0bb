"""Find an application's synced models: the :class:`~bridge.outbox.capture.Synced` mapped
classes of a module, in dependency order.

Backfill and reconciliation re-state rows of every synced model; the operator's
command line does not know the application's classes, so it names the module that
declares them (``--models services.shared.models`` or ``BRIDGE_MODELS``).

Order contract: a model whose table references another synced model's table (a
foreign key) comes after it — organizations before their users — so a receiver
that applies in order finds the parent first.  Ties keep the order of
``MetaData.sorted_tables`` (deterministic).

**Reconciliation is opt-in per model**: a class attribute ``__bridge_reconcile__ =
True``.  :func:`reconciled_models` picks those models and checks each one has what
reconciliation needs (a key of a supported kind, the version columns:
:func:`bridge.reconcile._digest.check_model`); one :class:`~bridge.errors.ConfigError`
names every model that lacks something and what.  Models that do not opt in are
still backfilled and captured; nothing about them is checked here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, inspect
from sqlalchemy.orm import Mapper

from bridge.errors import ConfigError
from bridge.outbox.capture import Synced
from bridge.reconcile._digest import check_model

#: The class attribute by which a model opts in to reconciliation.
RECONCILE_ATTRIBUTE = "__bridge_reconcile__"


def synced_models_of(classes: Iterable[Any]) -> tuple[type[Synced], ...]:
    """The mapped :class:`Synced` classes among ``classes``, parents before children."""
    mapped: dict[Table, type[Synced]] = {}
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Synced)):
            continue
        mapper = inspect(cls, raiseerr=False)
        if not isinstance(mapper, Mapper) or not isinstance(mapper.local_table, Table):
            continue
        mapped.setdefault(mapper.local_table, cls)
    if not mapped:
        return ()
    metadata = next(iter(mapped)).metadata
    order = [table for table in metadata.sorted_tables if table in mapped]
    order += [table for table in mapped if table not in order]  # other metadata: last
    return tuple(mapped[table] for table in order)


def load_synced_models(module_path: str) -> tuple[type[Synced], ...]:
    """Import ``module_path`` and return its synced models (see the module doc).

    Raises :class:`~bridge.errors.ConfigError` naming the module when it cannot be
    imported or declares no synced model.
    """
    if not module_path:
        raise ConfigError("no models module: pass --models <module> or set BRIDGE_MODELS")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(f"cannot import models module {module_path!r}: {exc}") from exc
    models = synced_models_of(vars(module).values())
    if not models:
        raise ConfigError(f"module {module_path!r} declares no synced (bridge.Synced) model")
    return models


def resource_names(models: Sequence[type[Synced]]) -> tuple[str, ...]:
    """The ``__bridge_resource__`` of each model, in order."""
    return tuple(model.__bridge_resource__ for model in models)


def reconciled_models(models: Sequence[type[Synced]]) -> tuple[type[Synced], ...]:
    """The models of ``models`` that opt in to reconciliation, in the same order
    (module doc); :class:`ConfigError` naming each one that lacks what it needs."""
    chosen = tuple(m for m in models if getattr(m, RECONCILE_ATTRIBUTE, False) is True)
    problems = []
    for model in chosen:
        try:
            check_model(model)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; and ".join(problems))
    return chosen
