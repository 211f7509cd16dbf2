"""Which exceptions report a dependency outage (503 naming it) and which stay internal errors (500)."""

from __future__ import annotations

import asyncpg
import redis.exceptions
import sqlalchemy.exc
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message
from temporalio.api.common.v1 import GrpcStatus
from temporalio.api.errordetails.v1 import WorkflowNotReadyFailure
from temporalio.service import RPCError, RPCStatusCode

from api.problems import CACHE_UNAVAILABLE, DATABASE_UNAVAILABLE, engine_unavailable, unavailable_dependency


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        return wrapped


def test_redis_errors_are_the_cache():
    assert unavailable_dependency(redis.exceptions.ConnectionError("refused")) is CACHE_UNAVAILABLE
    assert unavailable_dependency(redis.exceptions.TimeoutError("slow")) is CACHE_UNAVAILABLE
    assert unavailable_dependency(_raised_from(redis.exceptions.ConnectionError("x"))) is CACHE_UNAVAILABLE


def test_database_connection_errors_are_the_database():
    operational = sqlalchemy.exc.OperationalError("select 1", {}, ConnectionRefusedError())
    assert unavailable_dependency(operational) is DATABASE_UNAVAILABLE
    assert unavailable_dependency(sqlalchemy.exc.TimeoutError("pool")) is DATABASE_UNAVAILABLE
    assert unavailable_dependency(asyncpg.exceptions.CannotConnectNowError("starting")) is DATABASE_UNAVAILABLE
    invalidated = sqlalchemy.exc.DBAPIError("select 1", {}, Exception(), connection_invalidated=True)
    assert unavailable_dependency(invalidated) is DATABASE_UNAVAILABLE


def test_other_errors_stay_internal():
    assert unavailable_dependency(sqlalchemy.exc.IntegrityError("insert", {}, Exception())) is None
    assert unavailable_dependency(ValueError("bug")) is None
    # An OSError not raised inside the database driver (a file, say) is no database outage.
    assert unavailable_dependency(_raised_from(FileNotFoundError("/nope"))) is None


def _rpc_error(status: RPCStatusCode, *details: Message) -> RPCError:
    packed = []
    for detail in details:
        any_detail = Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    raw = GrpcStatus(code=int(status), message="x", details=packed).SerializeToString()
    return RPCError("x", status, raw)


def test_a_workflow_engine_that_will_take_the_call_later_is_unavailable():
    assert engine_unavailable(_rpc_error(RPCStatusCode.UNAVAILABLE))
    assert engine_unavailable(_rpc_error(RPCStatusCode.DEADLINE_EXCEEDED))
    assert engine_unavailable(_rpc_error(RPCStatusCode.RESOURCE_EXHAUSTED))
    # an update while the workflow's last task failed (timed out on a loaded worker) and is being retried
    assert engine_unavailable(_rpc_error(RPCStatusCode.FAILED_PRECONDITION, WorkflowNotReadyFailure()))


def test_a_refused_workflow_call_is_no_outage():
    assert not engine_unavailable(_rpc_error(RPCStatusCode.FAILED_PRECONDITION))
    assert not engine_unavailable(_rpc_error(RPCStatusCode.INVALID_ARGUMENT))
    assert not engine_unavailable(_rpc_error(RPCStatusCode.NOT_FOUND))
