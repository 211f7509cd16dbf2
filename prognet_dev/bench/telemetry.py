"""Section 8 of `prognet bench`: what tracing, metrics and the payload codec cost.

The same stack runs the same two loads with telemetry on (the default: spans exported by the worker and the API to
their JSONL files, Prometheus endpoints and request metrics, every payload AES-GCM encrypted) and off
(`BENCH_TELEMETRY_OFF=true`: no tracer provider nor instrumentation, no TracingInterceptor, no metrics endpoints
nor request metrics, plaintext payloads). Between phases every process of ours (API, worker, relay, consumers,
webhook dispatcher) is restarted with the other setting; the phases run in the order on, off, off, on, so drift
over the run (the database growing, the machine's other load) weighs on both sides alike.

Loads, each timed the way sections 1 and 4 time them:
- registrations through HTTP, from the first POST until every verification email is in the Maildir;
- billing cycles started all at once (a paid cycle: invoice, PaymentIntent in the Stripe sandbox, invoice paid,
  event, receipt email child), until every result is in; each run is checked (every cycle paid once).
After each restart a few of each run untimed, so connection pools and caches are warm.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

PHASES = ("on", "off", "off", "on")
WARMUP = 3


@dataclass
class Figures:
    registrations: list[float] = field(default_factory=list)  # sagas/s, one per phase
    billing: list[float] = field(default_factory=list)
    spans: list[int] = field(default_factory=list)  # span lines the phase added to the trace files


def trace_file_sizes(data_dir: Path) -> dict[int, int]:
    """Each development trace file's size (prognet.telemetry.JsonlSpanExporter), rotated ones included, by inode:
    a file keeps its inode when it is rotated (renamed to `.1.jsonl`)."""
    return {(st := path.stat()).st_ino: st.st_size for path in (data_dir / "traces").glob("*.jsonl")}


def spans_since(data_dir: Path, sizes: dict[int, int]) -> int:
    """Span lines written since `trace_file_sizes` gave `sizes`: what each file gained, wherever rotation moved it.
    A file rotated out twice in between (deleted) is not counted: the figure may fall short, never below zero."""
    total = 0
    for path in (data_dir / "traces").glob("*.jsonl"):
        with path.open("rb") as f:
            f.seek(sizes.get(os.fstat(f.fileno()).st_ino, 0))
            total += sum(1 for _ in f)
    return total


async def restart_app(stack, *, off: bool) -> None:
    """Stop every process of ours (API, worker, relay, consumers, webhook dispatcher), start them again with
    BENCH_TELEMETRY_OFF on or off: each of them traces, so restarting only some left spans in the "off" phases."""
    env = stack.env()
    env["BENCH_TELEMETRY_OFF"] = "true" if off else "false"
    ours = [p for p in (stack.worker, stack.relay, stack.consumers, stack.webhooks, stack.api) if p is not None]
    for process in reversed(ours):
        await process.stop()
    for process in ours:  # the API last: it waits until it listens
        process.env = env
        await process.start()


async def client_for(stack, *, off: bool):
    from temporalio.client import Client

    from prognet.payload_codec import data_converter

    settings = stack.settings(bench_telemetry_off=off)  # off: reads encrypted payloads, writes plaintext
    return await Client.connect(
        stack.temporal_address, namespace=stack.temporal_namespace, data_converter=data_converter(settings)
    )


async def bench_telemetry(stack, args) -> list[str]:
    from prognet_dev import SandboxAdmin
    from prognet_dev.bench import bench_registrations, billing

    n, bn = args.telemetry_sagas, args.telemetry_billing
    print(f"telemetry: creating {len(PHASES) * (bn + WARMUP)} tenants with Stripe customers ...", flush=True)
    subs = await billing.create_billing_tenants(stack, len(PHASES) * (bn + WARMUP))
    figures = {"on": Figures(), "off": Figures()}
    current = "on"  # the stack started its processes with the defaults
    async with SandboxAdmin(stack.stripe_api_base, timeout=60) as admin:
        for index, phase in enumerate(PHASES):
            if phase != current:
                print(f"telemetry: restarting our processes with telemetry {phase} ...", flush=True)
                await restart_app(stack, off=phase == "off")
                current = phase
            client = await client_for(stack, off=phase == "off")
            mine = subs[index * (bn + WARMUP) : (index + 1) * (bn + WARMUP)]
            await bench_registrations(stack.api_url, stack.maildir, WARMUP, WARMUP)
            warm = await billing.run_cycles(client, mine[bn:], stack.maildir, 60)
            await billing.verify_run(stack, admin, warm)
            await admin.wait_for_webhooks(timeout=60)

            sizes_before = trace_file_sizes(stack.data_dir)
            seconds = await bench_registrations(stack.api_url, stack.maildir, n, args.concurrency)
            run = await billing.run_cycles(client, mine[:bn], stack.maildir, max(120.0, bn))
            await billing.verify_run(stack, admin, run)
            await admin.wait_for_webhooks(timeout=60)
            figures[phase].registrations.append(n / seconds)
            figures[phase].billing.append(bn / run.seconds)
            figures[phase].spans.append(spans_since(stack.data_dir, sizes_before))
            print(
                f"telemetry {phase}: {n / seconds:.1f} registrations/s, {bn / run.seconds:.1f} billing cycles/s",
                flush=True,
            )
    if current != "on":
        await restart_app(stack, off=False)

    on, off = figures["on"], figures["off"]
    lines = [f"8. telemetry cost ({n} registrations and {bn} billing cycles per phase; phases {', '.join(PHASES)})"]
    for label, name in (("registration sagas through HTTP", "registrations"), ("billing cycles", "billing")):
        rate_on, rate_off = statistics.mean(getattr(on, name)), statistics.mean(getattr(off, name))
        lines.append(
            f"   {label:<32}: on {rate_on:7.1f} /s  off {rate_off:7.1f} /s  cost {(1 - rate_on / rate_off) * 100:5.1f}%"
            f"   (each phase: on {', '.join(f'{r:.1f}' for r in getattr(on, name))};"
            f" off {', '.join(f'{r:.1f}' for r in getattr(off, name))})"
        )
    lines.append(
        f"   spans written per phase: on {', '.join(map(str, on.spans))}; off {', '.join(map(str, off.spans))}"
        " (off must be 0; on may undercount: a file rotated out twice is gone, the last batch may be unwritten)"
    )
    return lines
