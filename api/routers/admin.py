"""Platform operators: every tenant's email tracking, dead letters (retry / discard) and the suppression list.

Only users with `users.is_platform_admin` (granted by `prognet admin grant EMAIL`) get past `PlatformAdmin`;
any other logged-in caller gets the 404 an unknown path gets, so these routes are not revealed. Reads use
`transaction(platform=True)`, the one context in which row-level security shows all tenants' email rows.

A dead letter is an `EmailDelivery` workflow parked in `awaiting_operator`: retry and discard are the signal
`email_decision` (`EmailDecision`) to `email-{id}`, exactly what an operator can send from the Temporal UI. The
API answers 202 once the workflow has the signal; the message's state changes when the workflow acts on it.
Operator actions are recorded as domain events (`email.retry_requested`, `email.discard_requested`,
`email.suppression_lifted`) without the address itself.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from sqlalchemy import func
from sqlmodel import select
from temporalio.client import Client, WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import DbDep, Operator, PlatformAdmin, TemporalConnectorDep
from api.problems import (
    EMAIL_ADDRESS_SUPPRESSED,
    EMAIL_NOT_DEAD_LETTERED,
    NOT_FOUND,
    Problem,
    problem_responses,
)
from api.routers.emails import (
    DEFAULT_LIMIT,
    Cursor,
    Limit,
    Since,
    StateFilter,
    TemplateFilter,
    Until,
    aware,
    check_window,
    email_filters,
    page_after,
    split_page,
)
from api.schemas import (
    AdminEmailDetail,
    AdminEmailLinks,
    AdminEmailPage,
    AdminEmailView,
    DiscardEmailRequest,
    EmailDecisionAccepted,
    RetryEmailRequest,
    SuppressionPage,
    SuppressionView,
)
from models.contracts import EmailDecision, SagaState
from models.db import transaction
from models.events import record_event
from models.names import QUERY_SAGA_STATE, SIGNAL_EMAIL_DECISION
from models.tables import EmailMessage, EmailSuppression

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_json_body)])

EMAIL_NOT_FOUND = "No email with this id."
SUPPRESSION_NOT_FOUND = "No suppression with this id."
QUERY_TIMEOUT = timedelta(seconds=3)
IN_FLIGHT = frozenset({"queued", "sending", "deferred", "dead_lettered"})  # the workflow is still running

EmailIdPath = Annotated[uuid.UUID, Path(description="The message id.")]
SuppressionIdPath = Annotated[uuid.UUID, Path(description="The suppression's id.")]
TenantFilter = Annotated[uuid.UUID | None, Query(description="Only this tenant's rows.")]
AddressFilter = Annotated[
    str | None, Query(min_length=1, max_length=320, description="Only this address (case-insensitive).")
]
ADMIN_ERRORS = (401, 404)  # 404 also for a caller who is not a platform admin


def _view(m: EmailMessage) -> AdminEmailView:
    return AdminEmailView(
        id=m.id,
        tenant_id=m.tenant_id,
        workflow_id=m.workflow_id,
        template=m.template,
        to_address=m.to_address,
        subject=m.subject,
        state=m.state,
        attempts=m.attempts,
        last_reply=m.last_reply,
        created_at=m.created_at,
        updated_at=m.updated_at,
        sent_at=m.sent_at,
    )


def _links(message_id: uuid.UUID) -> AdminEmailLinks:
    base = f"/v1/admin/emails/{message_id}"
    return AdminEmailLinks(self=base, retry=f"{base}/retry", discard=f"{base}/discard")


async def _message(engine: DbDep, message_id: uuid.UUID) -> EmailMessage:
    async with transaction(engine, platform=True) as db:
        message = await db.get(EmailMessage, message_id)
    if message is None:
        raise Problem(NOT_FOUND, EMAIL_NOT_FOUND)
    return message


async def _saga_state(temporal: TemporalConnectorDep, workflow_id: str) -> SagaState | None:
    client = await temporal.try_get(QUERY_TIMEOUT.total_seconds())
    if client is None:
        return None
    try:
        return await client.get_workflow_handle(workflow_id).query(
            QUERY_SAGA_STATE, result_type=SagaState, rpc_timeout=QUERY_TIMEOUT
        )
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError, RPCError):
        return None


def _require_dead_letter(message: EmailMessage) -> None:
    if message.state != "dead_lettered":
        raise Problem(
            EMAIL_NOT_DEAD_LETTERED,
            f"This email is {message.state}; only a dead-lettered email can be retried or discarded.",
            state=message.state,
        )


async def _signal(client: Client, message: EmailMessage, decision: EmailDecision) -> None:
    try:
        await client.get_workflow_handle(message.workflow_id).signal(SIGNAL_EMAIL_DECISION, decision)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # its workflow has ended (or never ran): nothing is parked
            raise Problem(
                EMAIL_NOT_DEAD_LETTERED,
                "This email's delivery workflow is no longer waiting for an operator.",
                state=message.state,
            ) from None
        raise


async def _record(engine: DbDep, message: EmailMessage, event: str, operator: Operator, payload: dict) -> None:
    async with transaction(engine, tenant_id=message.tenant_id) as db:
        record_event(
            db,
            event,
            "email",
            message.id,
            {"by": str(operator.user_id), **payload},
            tenant_id=message.tenant_id,
            workflow_id=message.workflow_id,
        )


# --- emails ----------------------------------------------------------------------------------------------------


@router.get(
    "/emails",
    response_model=AdminEmailPage,
    summary="All tenants' emails (platform operators)",
    description="Newest first across all tenants and platform mail (`tenant_id` null), filtered by `state` "
    "(e.g. `dead_lettered` for the dead-letter queue), `tenant_id`, `template` and a `since`/`until` "
    "window; cursor pagination as everywhere. Non-operators get 404.",
    responses=problem_responses(400, *ADMIN_ERRORS, 422),
)
async def list_emails(
    operator: PlatformAdmin,
    engine: DbDep,
    state: StateFilter = None,
    tenant_id: TenantFilter = None,
    template: TemplateFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> AdminEmailPage:
    since, until = aware(since), aware(until)
    check_window(since, until)
    query = email_filters(select(EmailMessage), state=state, template=template, since=since, until=until)
    if tenant_id is not None:
        query = query.where(EmailMessage.tenant_id == tenant_id)
    async with transaction(engine, platform=True) as db:
        rows = list((await db.exec(page_after(query, EmailMessage, cursor, limit))).all())
    rows, next_cursor = split_page(rows, limit)
    return AdminEmailPage(items=[_view(m) for m in rows], next_cursor=next_cursor)


@router.get(
    "/emails/{message_id}",
    response_model=AdminEmailDetail,
    summary="One email, with its workflow's saga state",
    description="Tracking row plus, while its `email-{id}` workflow runs, the saga state it reports (what it "
    "waits for).",
    responses=problem_responses(*ADMIN_ERRORS, 422),
)
async def get_email(
    message_id: EmailIdPath, operator: PlatformAdmin, engine: DbDep, temporal: TemporalConnectorDep
) -> AdminEmailDetail:
    message = await _message(engine, message_id)
    saga = await _saga_state(temporal, message.workflow_id) if message.state in IN_FLIGHT else None
    return AdminEmailDetail(**_view(message).model_dump(), saga=saga, links=_links(message.id))


@router.post(
    "/emails/{message_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EmailDecisionAccepted,
    summary="Send a dead-lettered email again",
    description="Only for `dead_lettered` emails (else 409 `email-not-dead-lettered`). Signals `email_decision` "
    "`{action: retry, to_address}` to the parked `email-{id}` workflow, which sends again, to "
    "`to_address` if given. A target address on this tenant's suppression list answers 409 "
    "`email-address-suppressed` (lift the suppression first, or correct the address). Follow the "
    "outcome at `links.self`.",
    responses=problem_responses(400, *ADMIN_ERRORS, 409, 413, 415, 422, 503),
)
async def retry_email(
    message_id: EmailIdPath,
    operator: PlatformAdmin,
    engine: DbDep,
    temporal: TemporalConnectorDep,
    body: RetryEmailRequest | None = None,
) -> EmailDecisionAccepted:
    body = body or RetryEmailRequest()
    message = await _message(engine, message_id)
    _require_dead_letter(message)
    target = (body.to_address or message.to_address).strip()
    async with transaction(engine, platform=True) as db:
        suppression = (
            await db.exec(
                select(EmailSuppression).where(
                    EmailSuppression.tenant_id.is_not_distinct_from(message.tenant_id),  # type: ignore[union-attr]
                    func.lower(EmailSuppression.address) == target.lower(),
                )
            )
        ).first()
    if suppression is not None:
        raise Problem(
            EMAIL_ADDRESS_SUPPRESSED,
            "The target address is suppressed after a permanent failure; "
            "lift the suppression or retry to a corrected address.",
            suppression_id=str(suppression.id),
        )
    client = await temporal.get()
    corrected = body.to_address is not None and target.lower() != message.to_address.lower()
    await _signal(
        client, message, EmailDecision(action="retry", to_address=target if corrected else None, reason=body.reason)
    )
    await _record(
        engine, message, "email.retry_requested", operator, {"address_corrected": corrected, "reason": body.reason}
    )
    log.info("email retry requested", extra={"workflow_id": message.workflow_id, "operator": str(operator.user_id)})
    return EmailDecisionAccepted(
        message_id=message.id,
        workflow_id=message.workflow_id,
        action="retry",
        links={"self": f"/v1/admin/emails/{message.id}"},
    )


@router.post(
    "/emails/{message_id}/discard",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EmailDecisionAccepted,
    summary="Give up on a dead-lettered email",
    description="Only for `dead_lettered` emails (else 409 `email-not-dead-lettered`). Signals `email_decision` "
    "`{action: discard}`; the workflow marks the email `discarded` and ends.",
    responses=problem_responses(400, *ADMIN_ERRORS, 409, 413, 415, 422, 503),
)
async def discard_email(
    message_id: EmailIdPath,
    operator: PlatformAdmin,
    engine: DbDep,
    temporal: TemporalConnectorDep,
    body: DiscardEmailRequest | None = None,
) -> EmailDecisionAccepted:
    body = body or DiscardEmailRequest()
    message = await _message(engine, message_id)
    _require_dead_letter(message)
    client = await temporal.get()
    await _signal(client, message, EmailDecision(action="discard", reason=body.reason))
    await _record(engine, message, "email.discard_requested", operator, {"reason": body.reason})
    log.info("email discard requested", extra={"workflow_id": message.workflow_id, "operator": str(operator.user_id)})
    return EmailDecisionAccepted(
        message_id=message.id,
        workflow_id=message.workflow_id,
        action="discard",
        links={"self": f"/v1/admin/emails/{message.id}"},
    )


# --- suppressions ------------------------------------------------------------------------------------------------


def _suppression_view(s: EmailSuppression) -> SuppressionView:
    return SuppressionView(
        id=s.id,
        tenant_id=s.tenant_id,
        address=s.address,
        reason=s.reason,
        message_id=s.message_id,
        created_at=s.created_at,
    )


@router.get(
    "/email-suppressions",
    response_model=SuppressionPage,
    summary="Suppressed addresses (platform operators)",
    description="Addresses that failed permanently, per tenant (`tenant_id` null: platform mail); newest first, "
    "cursor pagination. Filter by `tenant_id` and `address`.",
    responses=problem_responses(400, *ADMIN_ERRORS, 422),
)
async def list_suppressions(
    operator: PlatformAdmin,
    engine: DbDep,
    tenant_id: TenantFilter = None,
    address: AddressFilter = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> SuppressionPage:
    query = select(EmailSuppression)
    if tenant_id is not None:
        query = query.where(EmailSuppression.tenant_id == tenant_id)
    if address is not None:
        query = query.where(func.lower(EmailSuppression.address) == address.strip().lower())
    async with transaction(engine, platform=True) as db:
        rows = list((await db.exec(page_after(query, EmailSuppression, cursor, limit))).all())
    rows, next_cursor = split_page(rows, limit)
    return SuppressionPage(items=[_suppression_view(s) for s in rows], next_cursor=next_cursor)


@router.delete(
    "/email-suppressions/{suppression_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Lift a suppression",
    description="Sends to this address are allowed again. Records `email.suppression_lifted`.",
    responses=problem_responses(*ADMIN_ERRORS, 422),
)
async def lift_suppression(suppression_id: SuppressionIdPath, operator: PlatformAdmin, engine: DbDep) -> Response:
    async with transaction(engine, platform=True) as db:
        found = await db.get(EmailSuppression, suppression_id)
    if found is None:
        raise Problem(NOT_FOUND, SUPPRESSION_NOT_FOUND)
    # Again inside the tenant's context, so the event is written in the same transaction as the delete.
    async with transaction(engine, tenant_id=found.tenant_id, platform=True) as db:
        suppression = await db.get(EmailSuppression, suppression_id)
        if suppression is None:  # lifted concurrently
            raise Problem(NOT_FOUND, SUPPRESSION_NOT_FOUND)
        await db.delete(suppression)
        record_event(
            db,
            "email.suppression_lifted",
            "email_suppression",
            suppression.id,
            {
                "by": str(operator.user_id),
                "message_id": str(suppression.message_id) if suppression.message_id else None,
            },
            tenant_id=suppression.tenant_id,
        )
    log.info(
        "email suppression lifted", extra={"suppression_id": str(suppression_id), "operator": str(operator.user_id)}
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
