"""Shared fixtures: Temporal test servers from the wheels (never downloaded), tracing into memory."""

from __future__ import annotations

import gc
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from prognet import telemetry
from prognet.payload_codec import EncryptionCodec, converter_for

BIN_DIR = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

# The workflow tests' converter: the production one (pydantic + the encrypting codec) with a fixed test-only key.
TEST_PAYLOAD_KEY_ID = "tests"
TEST_PAYLOAD_KEY = bytes(range(32))
TEST_CONVERTER = converter_for(EncryptionCodec({TEST_PAYLOAD_KEY_ID: TEST_PAYLOAD_KEY}, TEST_PAYLOAD_KEY_ID))


SPANS = InMemorySpanExporter()


def pytest_configure(config: pytest.Config) -> None:
    """Tracing is on in every test, as in production: the one TracerProvider of this process (the API and the
    worker run in-process) records into memory instead of the data dir. Configured before collection: a test
    module may build an app (and so configure tracing, first come first served) while it is imported."""
    telemetry.configure_tracing("prognet-tests", exporter=SPANS)


@pytest.fixture(scope="module", autouse=True)
def short_collector_pauses() -> None:
    """Leave what earlier modules left alive out of the collector's full passes. One pytest process hosts the
    stack's clients, an API per test and the worker, and keeps what each module leaves: unchecked, its full
    passes reached 2 s (2.3 million objects) late in a suite. One of them in a workflow thread counts against
    temporalio's 2 s deadlock timeout; the interrupt it sends can land in a finalizer, which swallows it, and that
    run can then never be evicted (the worker never stops). The processes we ship stay small (prognet/gc_pauses.py)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def spans() -> InMemorySpanExporter:
    """This test's spans (and stragglers of the previous test's background work)."""
    SPANS.clear()  # keeps the session's memory flat
    return SPANS


def custom_search_attributes() -> list[SearchAttributeKey]:
    spec = json.loads((REPO / "temporal-config" / "search-attributes.json").read_text())
    assert set(spec.values()) == {"Keyword"}, "only Keyword attributes are defined so far"
    return [SearchAttributeKey.for_keyword(name) for name in spec]


async def start_time_skipping() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=TEST_CONVERTER,
        test_server_existing_path=str(BIN_DIR / "temporal-test-server"),
    )
    # The test server knows no custom search attributes until told, like a fresh real cluster.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in custom_search_attributes()},
        )
    )
    return env


@pytest.fixture(scope="module")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """One time-skipping server per test module: a module whose test leaves the server unable to skip time (an
    abandoned child still open) cannot stall the long timers of another module's tests."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


@pytest.fixture
async def own_ts_client() -> AsyncIterator[Client]:
    """A time-skipping server of the test's own (it starts in ~0.1 s), for a saga whose abandoned child (an email)
    closes after it: the test server then stops skipping time for good, which must not reach other tests."""
    env = await start_time_skipping()
    yield env.client
    await env.shutdown()


@pytest.fixture(scope="session")
async def local_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real dev server (updates, search attributes); state is in memory."""
    env = await WorkflowEnvironment.start_local(
        data_converter=TEST_CONVERTER,
        dev_server_existing_path=str(BIN_DIR / "temporal"),
        search_attributes=custom_search_attributes(),
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest.fixture
def ts_client(time_skipping_env: WorkflowEnvironment) -> Client:
    return time_skipping_env.client
