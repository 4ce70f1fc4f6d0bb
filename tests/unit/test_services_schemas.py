"""Request bodies: flat and Rails-wrapped, strict types, normalised natural keys (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.shared.schemas import (
    OrganizationCreate,
    OrganizationUpdate,
    UserCreate,
    UserUpdate,
)


def locs(exc: pytest.ExceptionInfo[ValidationError]) -> set[tuple[object, ...]]:
    return {tuple(e["loc"]) for e in exc.value.errors()}


def test_flat_and_wrapped_are_the_same_body() -> None:
    flat = OrganizationCreate.model_validate({"name": " Acme ", "domain": "ACME.test"})
    wrapped = OrganizationCreate.model_validate(
        {"organization": {"name": "Acme", "domain": "acme.test"}}
    )
    assert flat == wrapped
    assert flat.name == "Acme" and flat.domain == "acme.test" and flat.active is True


def test_wrapper_only_unwraps_its_own_resource() -> None:
    with pytest.raises(ValidationError) as exc:
        OrganizationCreate.model_validate({"user": {"name": "x", "domain": "a.test"}})
    assert ("user",) in locs(exc)
    with pytest.raises(ValidationError):
        OrganizationCreate.model_validate(
            {"organization": {"name": "x", "domain": "a.test"}, "extra": 1}
        )


def test_user_email_and_role_are_normalised() -> None:
    org = 4_503_599_627_370_495  # 2**52 - 1: an id near the top of the range
    user = UserCreate.model_validate(
        {"user": {"organization_id": str(org), "name": "Ann", "email": "Ann@Example.COM"}}
    )
    assert user.email == "ann@example.com" and user.role == "member"
    assert user.organization_id == org
    assert UserUpdate.model_validate({"role": "Admin"}).role == "admin"
    # The seed's clients send the bare JSON number; it is the same id.
    assert UserUpdate.model_validate({"organization_id": org}).organization_id == org


@pytest.mark.parametrize(
    "bad",
    [0, -1, 2**53, "9007199254740992", True, 1.0, "1.0", "0x10", "+5", "05", "", [1], "\uff11"],
)
def test_a_body_organization_id_that_is_not_an_id_names_the_field(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        UserUpdate.model_validate({"organization_id": bad})
    assert [error["loc"] for error in caught.value.errors()] == [("organization_id",)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 1, "domain": "a.test"}, "name"),
        ({"name": "x", "domain": "a.test", "active": "true"}, "active"),
        ({"name": "x", "domain": "a.test", "active": 1}, "active"),
        ({"name": "x", "domain": "-bad-.test"}, "domain"),
        ({"name": "x", "domain": "nodot"}, "domain"),
        ({"name": "   ", "domain": "a.test"}, "name"),
        ({"name": "x", "domain": "a.test", "id": "1"}, "id"),
    ],
)
def test_strict_create(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        OrganizationCreate.model_validate(body)
    assert (field,) in locs(exc)


def test_update_distinguishes_absent_from_null() -> None:
    assert OrganizationUpdate.model_validate({}).model_dump(exclude_unset=True) == {}
    assert OrganizationUpdate.model_validate({"organization": {"active": False}}).model_dump(
        exclude_unset=True
    ) == {"active": False}
    for field in ("name", "domain", "active"):
        with pytest.raises(ValidationError) as exc:
            OrganizationUpdate.model_validate({field: None})
        assert (field,) in locs(exc)
    with pytest.raises(ValidationError):
        UserUpdate.model_validate({"email": None})
