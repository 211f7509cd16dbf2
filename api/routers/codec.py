"""The codec server of the Temporal Web UI and CLI: `POST /codec/decode` and `POST /codec/encode`.

The standard protocol: `{"payloads": [...]}` in, the same shape out, each payload in proto3 JSON (`metadata`
values and `data` base64). The UI calls it from the operator's browser (CORS for `CODEC_CORS_ORIGINS`) with an
`X-Namespace` header and, behind SSO with `passAccessToken`, `Authorization: Bearer <access token>`.

Who may call it: a platform admin's access token, as for `/v1/admin` (no token: 401; a token of anyone else: the
404 an unknown path answers). In development (`CODEC_ALLOW_LOCAL_UI`, on by default there, refused in production)
a request without a token is served when it comes from a loopback address with the embedded UI's `Origin`, since
that UI has no login: anyone who can open the local UI, or send requests to the API from this machine, reads the
decoded payloads of this development stack.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payloads

from api.body_guard import require_json_body
from api.deps import AccessTokensDep, DbDep, SessionsDep, SettingsDep, current_caller, platform_admin
from api.problems import BAD_REQUEST, UNDECODABLE_PAYLOAD, Problem, problem_responses
from prognet.payload_codec import EncryptionCodec, PayloadDecryptionError

log = logging.getLogger("prognet.api")

PREFIX = "/codec"
router = APIRouter(prefix=PREFIX, tags=["codec"], dependencies=[Depends(require_json_body)])
_bearer = HTTPBearer(auto_error=False, description="A platform admin's access token (the Web UI's passAccessToken).")


class CodecPayload(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields of newer Payload messages pass through to the parser
    metadata: dict[str, str] = Field(default_factory=dict, description="Metadata values, base64.")
    data: str = Field("", description="The payload's bytes, base64.")


class CodecPayloads(BaseModel):
    # proto3 JSON leaves an empty list out: the CLI sends `{}` to encode a query without arguments
    payloads: list[CodecPayload] = Field(default_factory=list, description="Temporal payloads in proto3 JSON.")


async def codec_access(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    tokens: AccessTokensDep,
    sessions: SessionsDep,
    engine: DbDep,
) -> None:
    if credentials is None and settings.codec_local_ui_allowed and _from_local_ui(request, settings):
        return
    await platform_admin(await current_caller(credentials, tokens, sessions), engine)


def _from_local_ui(request: Request, settings: SettingsDep) -> bool:
    """The embedded UI's origin, from this machine. A browser sets Origin itself (no page of another site can
    claim the UI's); a local program can send any Origin, which is why this is a development setting."""
    origin = request.headers.get("origin", "").rstrip("/")
    peer = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False
    return loopback and origin in settings.local_ui_origins


def _codec(request: Request) -> EncryptionCodec:
    return request.app.state.payload_codec


Namespace = Annotated[
    str | None, Header(alias="X-Namespace", description="The Temporal namespace (the Web UI sends it).")
]
CODEC_RESPONSES = problem_responses(400, 401, 404, 413, 415, 422)


def _payloads(body: CodecPayloads, namespace: str | None, settings: SettingsDep) -> Payloads:
    if namespace and namespace != settings.temporal_namespace:
        raise Problem(BAD_REQUEST, f"This codec serves the namespace {settings.temporal_namespace!r} only.")
    try:
        return json_format.ParseDict(body.model_dump(), Payloads(), ignore_unknown_fields=True)
    except json_format.ParseError:
        raise Problem(BAD_REQUEST, "`payloads` must be Temporal payloads in proto3 JSON (base64 values).") from None


def _answer(payloads: list) -> CodecPayloads:
    as_json = json_format.MessageToDict(Payloads(payloads=payloads))
    return CodecPayloads.model_validate({"payloads": as_json.get("payloads", [])})


@router.post(
    "/decode",
    response_model=CodecPayloads,
    response_model_exclude_unset=True,
    summary="Decrypt payloads for the Temporal Web UI or CLI",
    description="Payloads this platform encrypted come back decrypted; any other payload comes back unchanged. "
    "Platform admins only.",
    responses=CODEC_RESPONSES,
    dependencies=[Depends(codec_access)],
)
async def decode(request: Request, body: CodecPayloads, settings: SettingsDep, namespace: Namespace = None):
    payloads = _payloads(body, namespace, settings)
    try:
        decoded = await _codec(request).decode(payloads.payloads)
    except PayloadDecryptionError as exc:
        raise Problem(UNDECODABLE_PAYLOAD, str(exc)) from None
    return _answer(decoded)


@router.post(
    "/encode",
    response_model=CodecPayloads,
    response_model_exclude_unset=True,
    summary="Encrypt payloads (input the Web UI or CLI sends to a workflow)",
    description="Each payload comes back encrypted with the current key. Platform admins only.",
    responses=CODEC_RESPONSES,
    dependencies=[Depends(codec_access)],
)
async def encode(request: Request, body: CodecPayloads, settings: SettingsDep, namespace: Namespace = None):
    payloads = _payloads(body, namespace, settings)
    return _answer(await _codec(request).encode(payloads.payloads))


class CodecCors:
    """CORS on `/codec` only: the Web UI's origins may call it from the browser, with the `X-Namespace` and
    `Authorization` headers; every other path keeps the same-origin default."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=["Content-Type", "X-Namespace", "Authorization"],
            allow_credentials=True,  # the UI's includeCredentials (cookies of an SSO proxy)
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        target = self.cors if path == PREFIX or path.startswith(PREFIX + "/") else self.app
        await target(scope, receive, send)
