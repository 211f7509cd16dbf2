"""Request and response bodies of the HTTP API. Requests forbid unknown fields."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr, StringConstraints

from models.contracts import SagaState

PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 1024

Password = Annotated[SecretStr, Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH,
                                      description=f"{PASSWORD_MIN_LENGTH}–{PASSWORD_MAX_LENGTH} characters.")]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"email": "ada@example.com", "password": "correct horse battery staple", "display_name": "Ada"},
    ]})
    email: EmailStr
    password: Password
    display_name: DisplayName | None = None


class VerifyRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"token": "Zk9vYmFyYmF6cXV4LXZlcmlmaWNhdGlvbi10b2tlbg"},
    ]})
    token: OpaqueToken


class LoginRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"email": "ada@example.com", "password": "correct horse battery staple"},
    ]})
    email: EmailStr
    password: Password


class RefreshRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"refresh_token": "3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b.q1w2e3r4t5y6u7i8o9p0"},
    ]})
    refresh_token: OpaqueToken


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")


class RegistrationLinks(BaseModel):
    self: str
    verify: str


class RegistrationAcceptedResponse(BaseModel):
    user_id: uuid.UUID
    workflow_id: str
    status: str
    links: RegistrationLinks


class VerifyResponse(BaseModel):
    user_id: uuid.UUID
    status: Literal["verified", "verifying"]


class MeResponse(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str | None
    status: str
    created_at: datetime
    verified_at: datetime | None


class WorkflowView(BaseModel):
    workflow_id: str
    type: str
    status: str = Field(description="Temporal execution status, lower case: running, completed, failed, …")
    started_at: datetime | None
    closed_at: datetime | None
    saga: SagaState | None = Field(description="The saga's own state (query `saga_state`); null if unavailable.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, Literal["ok", "down"]]
