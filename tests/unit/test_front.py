"""The round-robin front of `prognet dev --api-replicas N` and how the stack wires replicas and workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import pytest

from prognet.cli import build_parser
from prognet_dev import EmbeddedStack, RoundRobinFront, free_port, stack_settings

HOST = "127.0.0.1"


async def _upstream(name: str, port: int) -> asyncio.Server:
    """A stand-in replica: answers every connection with its name, after reading the request line."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(name.encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, HOST, port, reuse_address=True)


async def _ask(port: int) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET / HTTP/1.0\r\n")
    await writer.drain()
    answer = (await reader.read()).decode()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return answer


async def test_the_front_alternates_skips_a_dead_replica_and_takes_it_back() -> None:
    ports = [free_port(HOST), free_port(HOST)]
    servers = [await _upstream("a", ports[0]), await _upstream("b", ports[1])]
    front = RoundRobinFront(HOST, free_port(HOST), [(HOST, p) for p in ports], check_interval=0.1)
    await front.start()
    try:
        assert Counter([await _ask(front.port) for _ in range(6)]) == {"a": 3, "b": 3}

        servers[0].close()  # replica a dies: no connection is lost, b takes every one
        await servers[0].wait_closed()
        assert [await _ask(front.port) for _ in range(4)] == ["b"] * 4
        assert (HOST, ports[0]) not in front.healthy

        servers[0] = await _upstream("a", ports[0])  # back on its port: the health check notices
        async with asyncio.timeout(10):
            while (HOST, ports[0]) not in front.healthy:
                await asyncio.sleep(0.05)
        assert set([await _ask(front.port) for _ in range(4)]) == {"a", "b"}
        assert front.connections[(HOST, ports[0])] == 5 and front.refused == 0
    finally:
        await front.stop()
        for server in servers:
            server.close()


async def test_with_every_replica_down_a_connection_is_closed_not_hung() -> None:
    front = RoundRobinFront(HOST, free_port(HOST), [(HOST, free_port(HOST))], check_interval=0.1)
    await front.start()
    try:
        async with asyncio.timeout(10):
            assert await _ask(front.port) == ""
        assert front.refused == 1
    finally:
        await front.stop()


def test_the_stack_gives_each_replica_a_port_behind_the_front_and_names_each_worker(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    stack = EmbeddedStack(settings, app=True, workers=3, api_replicas=2)
    assert [w.name for w in stack.workers] == ["Worker 1", "Worker 2", "Worker 3"] and stack.worker is stack.workers[0]
    assert [a.name for a in stack.apis] == ["API 1", "API 2"] and stack.api is stack.apis[0]
    replica_ports = [a.listen[1] for a in stack.apis if a.listen]
    assert len(set(replica_ports)) == 2 and settings.api_port not in replica_ports
    assert [a.env["API_PORT"] for a in stack.apis] == [str(p) for p in replica_ports]
    assert stack.front is not None and stack.front.front.port == settings.api_port
    assert stack.api_url == f"http://{HOST}:{settings.api_port}"  # clients, webhooks and links use the front
    table = stack.table()
    for port in replica_ports:
        assert f"http://{HOST}:{port}/docs" in table
    assert "round-robin" in table
    # each worker serves /metrics on ports of its own (a shared port would stop the second one from starting)
    metrics = [(w.env["WORKER_METRICS_PORT"], w.env["WORKER_SDK_METRICS_PORT"]) for w in stack.workers]
    assert metrics[0] == (str(settings.worker_metrics_port), str(settings.worker_sdk_metrics_port))
    assert len({port for pair in metrics for port in pair}) == 6
    for worker_port, sdk_port in metrics:
        assert f"http://{HOST}:{worker_port}/metrics" in table and f"http://{HOST}:{sdk_port}/metrics" in table
    # the relay, the webhook dispatcher and the event consumers run once, whatever the number of replicas
    assert stack.relay is not None and stack.webhooks is not None and stack.consumers is not None
    assert sum(c in (stack.relay, stack.webhooks, stack.consumers) for c in stack.components) == 3

    single = EmbeddedStack(stack_settings(tmp_path / "one"), app=True)  # the default: no front, the usual port
    assert single.front is None and len(single.workers) == len(single.apis) == 1
    assert single.apis[0].listen == (HOST, single.api_port)


def test_dev_takes_replica_and_worker_counts() -> None:
    args = build_parser().parse_args(["dev", "--api-replicas", "2", "--workers", "3"])
    assert (args.api_replicas, args.workers) == (2, 3)
    defaults = build_parser().parse_args(["dev"])
    assert (defaults.api_replicas, defaults.workers) == (1, 1)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dev", "--workers", "0"])
