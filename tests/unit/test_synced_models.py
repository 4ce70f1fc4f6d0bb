"""Finding an application's synced models, parents before children."""

from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.reconcile.synced_models import load_synced_models, resource_names, synced_models_of
from services.shared.models import Organization, SyncConflict, User


def test_services_models_are_found_parents_first() -> None:
    models = load_synced_models("services.shared.models")
    assert models == (Organization, User)
    assert resource_names(models) == ("organization", "user")


def test_order_does_not_depend_on_the_order_given() -> None:
    assert synced_models_of([User, SyncConflict, Organization, "x"]) == (Organization, User)


def test_a_module_without_synced_models_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'bridge\.errors' declares no synced"):
        load_synced_models("bridge.errors")


def test_a_missing_module_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cannot import models module 'no\.such\.models'"):
        load_synced_models("no.such.models")
    with pytest.raises(ConfigError, match="BRIDGE_MODELS"):
        load_synced_models("")
