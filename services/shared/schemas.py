"""Request and response bodies (pydantic v2).

Create/update bodies are accepted flat (``{"name": ...}``) and wrapped the Rails
way (``{"organization": {...}}`` / ``{"user": {...}}``), because existing scripts
send the wrapped form.  Validation is strict where a lax conversion would hide a
client bug: strings must be strings, booleans must be booleans, unknown fields
are rejected, and ``null`` is never accepted for a field that cannot be null.
Natural keys are normalised to lower case (domains and emails compare
case-insensitively).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from bridge.envelope import format_timestamp
from bridge.ids import MAX_ID, parse_id


#: A record id from a client: a JSON integer or its decimal text (``42`` or ``"42"``),
#: 1..2**53-1 (:func:`bridge.ids.parse_id`, the one rule); anything else is a 422 naming
#: the field.  Responses carry ids as JSON numbers.
def _record_id(value: Any, info: ValidationInfo) -> int:
    return parse_id(value, field=info.field_name or "id")


RecordId = Annotated[
    int,
    BeforeValidator(_record_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                {"type": "string", "pattern": "^[1-9][0-9]{0,15}$"},
            ]
        }
    ),
]

#: No NUL characters: PostgreSQL text cannot store them (it was a 500; now a 422).
Name = Annotated[
    str,
    StringConstraints(
        strict=True, strip_whitespace=True, min_length=1, max_length=255, pattern=r"^[^\x00]*$"
    ),
]
Domain = Annotated[
    str,
    StringConstraints(
        strict=True,
        strip_whitespace=True,
        max_length=253,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$",
    ),
]
#: Roles are an open vocabulary (each organization has its own), but constrained to a slug.
Role = Annotated[
    str,
    StringConstraints(strict=True, strip_whitespace=True, pattern=r"^[a-z][a-z_]{0,31}$"),
]
DEFAULT_ROLE = "member"
MAX_PAGE_SIZE = 500
#: PostgreSQL's OFFSET is a bigint: a larger offset is a 422, not a database error (a 500).
MAX_OFFSET = 2**63 - 1


class _Body(BaseModel):
    """Base of request bodies: strict, no unknown fields, Rails-style wrapper accepted."""

    model_config = ConfigDict(extra="forbid")
    wrapper: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _unwrap(cls, data: Any) -> Any:
        # {"organization": {...}} is the Rails form; a lone wrapper key holding an object.
        if isinstance(data, dict) and len(data) == 1 and isinstance(data.get(cls.wrapper), dict):
            return data[cls.wrapper]
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only for fields the client sent: an explicit null is an error, not "unchanged".
        if value is None:
            raise ValueError("must not be null")
        return value

    @field_validator("domain", "role", mode="before", check_fields=False)
    @classmethod
    def _lower(cls, value: Any) -> Any:
        # Before the pattern check: "Acme.Test" is the same domain as "acme.test".
        return value.lower() if isinstance(value, str) else value

    @field_validator("email", mode="after", check_fields=False)
    @classmethod
    def _lower_email(cls, value: str | None) -> str | None:
        return value.lower() if isinstance(value, str) else value


class OrganizationCreate(_Body):
    wrapper: ClassVar[str] = "organization"

    name: Name
    domain: Domain
    active: StrictBool = True


class OrganizationUpdate(_Body):
    wrapper: ClassVar[str] = "organization"

    name: Name | None = None
    domain: Domain | None = None
    active: StrictBool | None = None


class UserCreate(_Body):
    wrapper: ClassVar[str] = "user"

    organization_id: RecordId
    name: Name
    email: EmailStr
    role: Role = DEFAULT_ROLE
    active: StrictBool = True


class UserUpdate(_Body):
    wrapper: ClassVar[str] = "user"

    organization_id: RecordId | None = None
    name: Name | None = None
    email: EmailStr | None = None
    role: Role | None = None
    active: StrictBool | None = None


class _Out(BaseModel):
    """Base of responses: timestamps as on the wire (UTC, microseconds, ``Z``)."""

    model_config = ConfigDict(from_attributes=True)

    @field_serializer("created_at", "updated_at", check_fields=False)
    def _timestamp(self, value: datetime) -> str:
        return format_timestamp(value)


class OrganizationOut(_Out):
    id: int
    name: str
    domain: str
    active: bool
    created_at: datetime
    updated_at: datetime
    origin: str


class UserOut(_Out):
    id: int
    organization_id: int
    name: str
    email: str
    role: str
    active: bool
    created_at: datetime
    updated_at: datetime
    origin: str


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items`` plus where it is in the whole (``total``)."""

    items: list[T]
    total: int
    limit: int
    offset: int


class PageParams(BaseModel):
    """``?limit=&offset=`` (validated; bad values are 422s)."""

    limit: int = Field(50, ge=1, le=MAX_PAGE_SIZE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class ErrorBody(BaseModel):
    """Every error response: a message, and for 422s the offending fields."""

    error: str
    details: list[dict[str, Any]] | None = None
