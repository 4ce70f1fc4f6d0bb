"""The HTTP API, the same on both systems (seed's API tables plus DELETE).

``GET/POST /organizations``, ``GET/PATCH/DELETE /organizations/{id}`` and the same for
``/users`` (``/health``, ``/metrics``, ``/sync_status``: :mod:`services.shared.status`).
Every write runs in one transaction on the bridge's session factory, so the outbox row
is committed with the change (or not at all).  Lists paginate with ``limit``/``offset`` and return
``total``.  Ids are JSON numbers in responses; a path id is its decimal text
(:func:`bridge.ids.parse_id`), and one that is not a positive integer below 2**53 is a
404 (no such record), like an unknown one.
A PATCH or DELETE of a record whose stored version is more than ``max_clock_skew``
ahead of the clock is a 409 naming the record and the repair (never a 500).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.errors import InvalidIdError
from bridge.ids import parse_id
from services.shared.errors import NotFound
from services.shared.repository import integrity_error_to_invalid
from services.shared.schemas import (
    ErrorBody,
    OrganizationCreate,
    OrganizationOut,
    OrganizationUpdate,
    Page,
    PageParams,
    RecordId,
    UserCreate,
    UserOut,
    UserUpdate,
)
from services.shared.state import ServiceState

T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such record"},
    422: {"model": ErrorBody, "description": "Invalid input, with field details"},
}
#: Operations with a request body also answer 400 when the body cannot be decoded at all.
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorBody, "description": "Body is not decodable JSON"},
}

#: A change of a record whose stored version is from the future is refused (repository).
FUTURE_VERSION = "Stored version is more than max_clock_skew ahead; the message says how to repair"
CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **WRITE_ERRORS,
    409: {"model": ErrorBody, "description": FUTURE_VERSION},
}


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]
router = APIRouter()


@asynccontextmanager
async def write(state: ServiceState) -> AsyncIterator[AsyncSession]:
    """One write transaction; a unique index lost to a concurrent write becomes a 422."""
    async with state.session_factory() as session:
        try:
            async with session.begin():
                yield session
        except IntegrityError as exc:
            mapped = integrity_error_to_invalid(exc)
            if mapped is None:
                raise
            raise mapped from exc


async def read(state: ServiceState, op: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with state.session_factory() as session:
        return await op(session)


def path_id(raw: str, resource: str) -> int:
    """The id in a URL, or :class:`NotFound`: no record has an id that is not one."""
    try:
        return parse_id(raw)
    except InvalidIdError:
        raise NotFound(f"{resource} {raw} not found") from None


# -- organizations ------------------------------------------------------------------------
@router.get("/organizations", response_model=Page[OrganizationOut], tags=["organizations"])
async def list_organizations(
    state: State, page: Annotated[PageParams, Query()]
) -> Page[OrganizationOut]:
    rows, total = await read(
        state,
        lambda s: state.repository.list_organizations(s, limit=page.limit, offset=page.offset),
    )
    return Page[OrganizationOut](
        items=[OrganizationOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.post(
    "/organizations",
    status_code=201,
    response_model=OrganizationOut,
    responses=WRITE_ERRORS,
    tags=["organizations"],
)
async def create_organization(state: State, body: OrganizationCreate) -> OrganizationOut:
    async with write(state) as session:
        org = await state.repository.create_organization(session, body)
    return OrganizationOut.model_validate(org)


@router.get(
    "/organizations/{org_id}",
    response_model=OrganizationOut,
    responses=ERRORS,
    tags=["organizations"],
)
async def get_organization(state: State, org_id: str) -> OrganizationOut:
    key = path_id(org_id, "organization")
    org = await read(state, lambda s: state.repository.get_organization(s, key))
    if org is None:
        raise NotFound(f"organization {org_id} not found")
    return OrganizationOut.model_validate(org)


@router.patch(
    "/organizations/{org_id}",
    response_model=OrganizationOut,
    responses=CHANGE_ERRORS,
    tags=["organizations"],
)
async def update_organization(
    state: State, org_id: str, body: OrganizationUpdate
) -> OrganizationOut:
    key = path_id(org_id, "organization")
    async with write(state) as session:
        org = await state.repository.update_organization(session, key, body)
        if org is None:
            raise NotFound(f"organization {org_id} not found")
    return OrganizationOut.model_validate(org)


@router.delete(
    "/organizations/{org_id}",
    status_code=204,
    responses={
        **ERRORS,
        409: {"model": ErrorBody, "description": f"Has live users. Or: {FUTURE_VERSION}"},
    },
    tags=["organizations"],
)
async def delete_organization(state: State, org_id: str) -> Response:
    key = path_id(org_id, "organization")
    async with write(state) as session:
        if not await state.repository.delete_organization(session, key):
            raise NotFound(f"organization {org_id} not found")
    return Response(status_code=204)


# -- users ----------------------------------------------------------------------------------
@router.get("/users", response_model=Page[UserOut], tags=["users"])
async def list_users(
    state: State,
    page: Annotated[PageParams, Query()],
    organization_id: RecordId | None = None,
) -> Page[UserOut]:
    rows, total = await read(
        state,
        lambda s: state.repository.list_users(
            s, limit=page.limit, offset=page.offset, organization_id=organization_id
        ),
    )
    return Page[UserOut](
        items=[UserOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.post(
    "/users", status_code=201, response_model=UserOut, responses=WRITE_ERRORS, tags=["users"]
)
async def create_user(state: State, body: UserCreate) -> UserOut:
    async with write(state) as session:
        user = await state.repository.create_user(session, body)
    return UserOut.model_validate(user)


@router.get("/users/{user_id}", response_model=UserOut, responses=ERRORS, tags=["users"])
async def get_user(state: State, user_id: str) -> UserOut:
    key = path_id(user_id, "user")
    user = await read(state, lambda s: state.repository.get_user(s, key))
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return UserOut.model_validate(user)


@router.patch("/users/{user_id}", response_model=UserOut, responses=CHANGE_ERRORS, tags=["users"])
async def update_user(state: State, user_id: str, body: UserUpdate) -> UserOut:
    key = path_id(user_id, "user")
    async with write(state) as session:
        user = await state.repository.update_user(session, key, body)
        if user is None:
            raise NotFound(f"user {user_id} not found")
    return UserOut.model_validate(user)


@router.delete(
    "/users/{user_id}",
    status_code=204,
    responses={**ERRORS, 409: {"model": ErrorBody, "description": FUTURE_VERSION}},
    tags=["users"],
)
async def delete_user(state: State, user_id: str) -> Response:
    key = path_id(user_id, "user")
    async with write(state) as session:
        if not await state.repository.delete_user(session, key):
            raise NotFound(f"user {user_id} not found")
    return Response(status_code=204)
