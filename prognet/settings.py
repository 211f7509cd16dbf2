"""The one settings object for every ProgNetwork process.

Values come from the environment (or a `.env` file). A service left unset (`DATABASE_URL`,
`REDIS_URL`, `TEMPORAL_ADDRESS`, `SMTP_HOST`) means "use the embedded one" under `prognet dev`;
the dev stack then passes the concrete address to the worker and API it starts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret", "dev", "development"}
PLACEHOLDER_MARK = "change-me"  # every secret in .env.example carries it
MIN_SECRET_LENGTH = 32
DEV_STRIPE_SECRET_KEY = "sk_test_prognet_sandbox"  # accepted by the dev Stripe sandbox only
DEV_STRIPE_WEBHOOK_SECRET = "whsec_prognet_sandbox_development_only"  # the dev sandbox signs webhooks with it
STRIPE_API_BASE = "https://api.stripe.com"


def _default_alerting_config() -> Path:
    """The repository's config/alerting.toml: beside the source tree, or (an installed package, the Docker image)
    under the working directory."""
    beside = Path(__file__).resolve().parents[1] / "config" / "alerting.toml"
    return beside if beside.exists() else Path("config") / "alerting.toml"


class RetrySetting(BaseModel):
    """A retry policy (models/retry_policies.RetrySpec): Temporal retries a failed activity after
    initial_interval_seconds, each further wait backoff_coefficient times longer, at most maximum_interval_seconds
    apart, until maximum_attempts (0: without limit)."""

    initial_interval_seconds: float = Field(1.0, gt=0, description="Wait before the second attempt.")
    backoff_coefficient: float = Field(2.0, ge=1, description="Each further wait is this many times longer.")
    maximum_interval_seconds: float = Field(60.0, gt=0, description="Longest wait between two attempts.")
    maximum_attempts: int = Field(0, ge=0, description="Attempts in all, the first included; 0: without limit.")

    @model_validator(mode="after")
    def _interval_order(self) -> RetrySetting:
        if self.maximum_interval_seconds < self.initial_interval_seconds:
            raise ValueError("maximum_interval_seconds must not be below initial_interval_seconds")
        return self


class CompensationRetrySetting(RetrySetting):
    """A compensation's: it gives up sooner (then the saga waits for an operator). Its own defaults, so a setting
    that names one field (RETRY_COMPENSATION_STRIPE__MAXIMUM_ATTEMPTS=3) keeps the others."""

    maximum_interval_seconds: float = Field(30.0, gt=0, description="Longest wait between two attempts.")
    maximum_attempts: int = Field(5, ge=0, description="Attempts in all, the first included; 0: without limit.")


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value may be a secret (PAYLOAD_KEYS, SECRET_KEY); errors name it, never echo it
    # env_nested_delimiter: one field of a nested setting on its own, e.g. RETRY_STRIPE__MAXIMUM_ATTEMPTS=10
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, hide_input_in_errors=True, env_nested_delimiter="__"
    )

    environment: Literal["development", "production"] = Field(
        "development",
        validation_alias=AliasChoices("PROGNET_ENV", "environment"),
        description="`production` refuses to start without real secrets and external services.",
    )
    data_dir: Path = Field(
        Path(".prognet"),
        validation_alias=AliasChoices("PROGNET_DATA_DIR", "data_dir"),
        description="Where the embedded stack keeps its state (Temporal DB, PostgreSQL, Redis, mail, keys).",
    )

    # --- services (unset = embedded under `prognet dev`) ---
    database_url: str | None = Field(
        None, description="postgresql+asyncpg://user:pass@host:port/db, as the application role (subject to RLS)"
    )
    migration_database_url: str | None = Field(
        None, description="the same database as the schema owner, for migrations; defaults to DATABASE_URL"
    )
    database_read_url: str | None = Field(
        None, description="where queries read (a replica), as the application role; defaults to DATABASE_URL"
    )
    redis_url: str | None = Field(None, description="redis://host:port/0")
    cache_redis_url: str | None = Field(None, description="the read-model cache's Redis; defaults to REDIS_URL")
    temporal_address: str | None = Field(None, description="host:port of the Temporal frontend")
    temporal_namespace: str = "default"
    smtp_host: str | None = Field(None, description="SMTP relay host")
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_start_tls: bool = False
    smtp_timeout_seconds: float = 10.0
    mail_from: str = "ProgNetwork <no-reply@prognet.localhost>"

    # --- embedded stack ports (used only when the matching service is embedded) ---
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    redis_port: int = 6379

    # --- Stripe (unset STRIPE_API_BASE = the embedded sandbox under `prognet dev`, api.stripe.com otherwise) ---
    stripe_api_base: str | None = Field(
        None, description="Base URL of the Stripe API; unset: the dev stack's sandbox, else https://api.stripe.com"
    )
    stripe_secret_key: SecretStr | None = Field(
        SecretStr(DEV_STRIPE_SECRET_KEY),
        description="Stripe secret key; the sandbox accepts any sk_test_… key; production needs a real one",
    )
    stripe_sandbox_port: int = 12111
    stripe_webhook_secret: SecretStr | None = Field(
        SecretStr(DEV_STRIPE_WEBHOOK_SECRET),
        description="Signing secret (whsec_…) of the Stripe webhook endpoint; the dev sandbox signs with it",
    )
    stripe_webhook_secret_previous: SecretStr | None = Field(
        None, description="The endpoint's previous signing secret, still accepted while Stripe rolls it; unset after"
    )
    stripe_webhook_url: str | None = Field(
        None, description="Where the dev Stripe sandbox POSTs its events; unset: <API url>/v1/webhooks/stripe"
    )

    public_base_url: str = Field(
        "http://127.0.0.1:8000", description="Base of links put into emails (verification links)."
    )

    # --- secrets and auth ---
    secret_key: SecretStr | None = Field(
        None, description="Signs JWTs and derives verification tokens. Dev mode generates one into the data dir."
    )
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    login_max_failures: int = 5
    login_failure_window_seconds: int = 15 * 60
    trusted_proxies: str = Field(
        "",
        description="Comma-separated CIDRs of reverse proxies whose X-Forwarded-For names the client address "
        "(login throttling); empty: the socket peer is the client.",
    )
    argon2_time_cost: int = 3
    argon2_memory_cost_kib: int = 65536
    argon2_parallelism: int = 4

    # --- sagas ---
    registration_verification_timeout: timedelta = Field(
        timedelta(hours=24), description="How long a pending registration waits for verification."
    )
    email_change_verification_timeout: timedelta = Field(
        timedelta(hours=24), description="How long an email change waits for the new address to be verified."
    )
    invitation_timeout: timedelta = Field(
        timedelta(days=7), description="How long an invitation waits for acceptance before it expires."
    )

    # --- retry policies of saga steps and compensations, per external service (models/retry_policies.py) ---
    # Each is {initial_interval_seconds, backoff_coefficient, maximum_interval_seconds, maximum_attempts (0: no
    # limit)}: RETRY_STRIPE='{"maximum_attempts": 10}' or RETRY_STRIPE__MAXIMUM_ATTEMPTS=10. Recorded in each
    # saga's input when it starts: a change applies to sagas started after it.
    retry_database: RetrySetting = Field(
        default_factory=RetrySetting,
        description="Forward saga steps on our database (users, tenants, invoices, …); default 1 s, x2, at most "
        "60 s apart, without limit.",
    )
    retry_stripe: RetrySetting = Field(
        default_factory=RetrySetting,
        description="Forward saga steps that call Stripe (customer, PaymentIntent); an open Stripe circuit is "
        "waited out, not counted. Default 1 s, x2, at most 60 s apart, without limit.",
    )
    retry_compensation_database: CompensationRetrySetting = Field(
        default_factory=CompensationRetrySetting,
        description="Compensations on our database; after the last attempt the saga waits for an operator. "
        "Default 1 s, x2, at most 30 s apart, 5 attempts.",
    )
    retry_compensation_stripe: CompensationRetrySetting = Field(
        default_factory=CompensationRetrySetting,
        description="Compensations that call Stripe (delete customer, refund). Default 1 s, x2, at most 30 s "
        "apart, 5 attempts.",
    )

    # --- email delivery pipeline ---
    email_retry_initial_seconds: float = Field(5.0, description="First wait after a temporary SMTP failure.")
    email_retry_backoff_coefficient: float = Field(2.0, description="Each further wait is this much longer.")
    email_retry_max_interval_seconds: float = Field(600.0, description="Longest wait between two attempts.")
    email_retry_max_attempts: int = Field(8, description="Attempts before a message goes to the dead letter.")
    email_max_per_second: float = Field(20.0, description="SMTP sends per second across all email workers.")

    # --- billing ---
    billing_dunning_days: list[int] = Field(
        [1, 3, 5, 7],
        description="After a declined charge: retry (with a reminder email) this many days after "
        "the first failure; then the invoice is uncollectible and the tenant suspended.",
    )
    billing_poll_seconds: int = Field(
        300, ge=5, description="While a payment's webhook has not arrived, ask Stripe for its outcome this often."
    )

    # --- event relay (domain_events -> Redis Streams) ---
    event_stream_maxlen: int = Field(
        100_000,
        ge=1,
        description="Entries kept in each event stream (approximate MAXLEN ~); domain_events keeps everything.",
    )
    relay_batch_size: int = Field(500, ge=1, description="Events the relay publishes per Redis transaction.")
    relay_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="The relay's fallback poll, for a missed notification or an event held back by a transaction "
        "that was still open; new events wake it at once (LISTEN/NOTIFY).",
    )

    # --- server-sent event streams (GET /v1/events/stream, GET /v1/workflows/{id}/stream) ---
    sse_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        description="Comment line sent this often on an idle stream (keeps proxies from closing it); the caller's "
        "session and tenant access are rechecked at the same pace.",
    )
    sse_max_streams_per_user: int = Field(
        5, ge=1, description="Concurrent event and saga-progress streams one user may hold, across all replicas."
    )
    sse_max_streams_per_process: int = Field(
        500,
        ge=1,
        description="Concurrent streams one API process serves (then 503 `streams-at-capacity` with Retry-After, "
        "so a load balancer or client tries again, perhaps on another replica). Each stream costs two sockets (the "
        "client's and a Redis connection while it waits for events): keep the open-files limit above twice this.",
    )
    sse_redis_max_connections: int = Field(
        500,
        ge=1,
        description="Redis connections of the API process's own pool for streams, apart from the pool ordinary "
        "requests use (logins, sessions, throttles), so streams never make them wait. Each stream uses at most one "
        "at a time: keep it at least SSE_MAX_STREAMS_PER_PROCESS.",
    )
    sse_send_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A write to a stream that cannot go out this long (the client stopped reading) ends the stream "
        "as a slow consumer.",
    )

    # --- outbound webhooks (webhooks/, workflows/webhook_delivery.py) ---
    webhook_timeout_seconds: float = Field(15.0, gt=0, description="How long one delivery attempt may take.")
    webhook_retry_schedule_seconds: list[float] = Field(
        [0, 5, 300, 1800, 7200, 18000, 36000, 36000],
        min_length=1,
        description="Wait before each delivery attempt (the first: 0 = at once); after the last failed attempt the "
        "delivery is dead-lettered. Default: Svix's (now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).",
    )
    webhook_secret_overlap: timedelta = Field(
        timedelta(hours=24), description="How long a rotated-out signing secret keeps signing beside the new one."
    )
    webhook_disable_after: timedelta = Field(
        timedelta(days=5),
        description="An endpoint whose every delivery attempt failed for this long is disabled (event + email).",
    )
    webhook_allow_private_targets: bool | None = Field(
        None,
        description="Let webhooks go to http:// and to loopback/private addresses (a local receiver); "
        "unset: true in development, false in production.",
    )

    # --- event consumers, read models and their cache ---
    cache_ttl_tenant_overview: float = Field(60.0, description="Seconds a cached tenant overview is served.")
    cache_ttl_user_profile: float = Field(60.0, description="Seconds a cached user profile is served.")
    consumer_partitions: int = Field(
        4, ge=1, description="Ordering partitions of each consumer: a tenant's (or aggregate's) events share one."
    )
    consumer_lease_seconds: float = Field(
        10.0, description="A consumer copy silent this long loses its partitions; another reclaims their entries."
    )
    consumer_max_attempts: int = Field(5, description="Failed attempts at one entry before it is parked.")
    read_consistency_wait_seconds: float = Field(
        1.0, description="How long a read with Consistent-After waits for the read model before using the primary."
    )

    # --- metrics (Prometheus text on GET /metrics; port 0: not served) ---
    metrics_host: str = Field("127.0.0.1", description="Where the worker's and the relay's /metrics listen.")
    worker_metrics_port: int = Field(9464, ge=0, description="The worker's business metrics (sagas, emails, …).")
    worker_sdk_metrics_port: int = Field(
        9465, ge=0, description="The Temporal SDK's runtime metrics of the worker (task latencies, failures)."
    )
    temporal_metrics_port: int = Field(9233, ge=0, description="The embedded Temporal dev server's own metrics.")
    relay_metrics_port: int = Field(
        0, ge=0, description="The relay's /metrics (its process; 0: off). docker-compose serves it for Prometheus."
    )

    # --- circuit breakers (Stripe, SMTP, outbound webhooks per host; state shared through Redis) ---
    circuit_window_seconds: float = Field(60.0, gt=0, description="Sliding window the failure rate is taken over.")
    circuit_min_calls: int = Field(5, ge=1, description="Calls in the window before the rate can open the circuit.")
    circuit_failure_rate: float = Field(
        0.5, gt=0, le=1, description="Share of calls in the window failing with 'service down' that opens it."
    )
    circuit_cooldown_seconds: float = Field(
        30.0, gt=0, description="How long an open circuit fails calls fast before letting probes through."
    )
    circuit_half_open_probes: int = Field(1, ge=1, description="Calls let through at once while half-open.")
    circuit_half_open_retry_seconds: float = Field(
        2.0, gt=0, description="While half-open, when a call turned away (probes all out) may try again."
    )

    # --- payload encryption (the Temporal payload codec) and the codec server (/codec) ---
    payload_keys: SecretStr | None = Field(
        None,
        description="Comma-separated `id:base64key` AES-256 keys (32 random bytes each, e.g. `openssl rand -base64 "
        "32`) that encrypt Temporal payloads; keep old keys listed so old histories stay readable. Required in "
        "production; unset in development: one key derived from SECRET_KEY.",
    )
    payload_key_id: str | None = Field(
        None, description="The key id that encrypts new payloads (the others only decrypt); default: the first key."
    )
    codec_cors_origins: str = Field(
        "",
        description="Comma-separated origins of the Temporal Web UI allowed to call /codec from the browser; empty in "
        "development: the embedded UI (http://127.0.0.1:TEMPORAL_UI_PORT and http://localhost:TEMPORAL_UI_PORT).",
    )
    codec_allow_local_ui: bool | None = Field(
        None,
        description="Development only (refused in production): /codec answers a request without a token when it "
        "comes from a loopback address with the embedded UI's Origin. Unset: on in development.",
    )

    # --- alerting (config/alerting.toml; the evaluator Schedule `alert-evaluator`) ---
    alerting_config: Path = Field(
        default_factory=lambda: _default_alerting_config(),
        description="The alert rules and the on-call routing table (TOML), validated when the worker starts.",
    )
    alert_escalation_seconds: float | None = Field(
        None,
        gt=0,
        description="Replaces every routing level's timeout and repeat interval (`prognet dev` sets 30, so an "
        "escalation can be watched in a minute); unset: the routing table's times.",
    )
    alertmanager_token: SecretStr | None = Field(
        None, description="Bearer token Alertmanager's webhook sends to /v1/admin/incidents/alertmanager; unset: off."
    )

    bench_telemetry_off: bool = Field(
        False,
        description="Development only (refused in production): no tracing, no metrics endpoints or request metrics, "
        "and new Temporal payloads unencrypted (encrypted ones still decrypt). How `prognet bench --only telemetry` "
        "measures what tracing, metrics and the codec cost.",
    )

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR, for every process.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="json: one JSON object per line with trace_id/span_id inside a span (for a log pipeline); "
        "text: `LEVEL logger: message key=value trace=…` (what `prognet dev` gives the processes it starts).",
    )

    @field_validator("smtp_username", "smtp_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # SMTP_USERNAME= in an env file means "no SMTP login"

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_cidrs(cls, value: str) -> str:
        for cidr in value.split(","):
            if cidr.strip():
                ipaddress.ip_network(cidr.strip(), strict=False)  # ValueError names the bad entry
        return value

    @field_validator("payload_keys")
    @classmethod
    def _valid_payload_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_payload_keys(value.get_secret_value())  # ValueError names the bad entry, never the key
        return value

    @model_validator(mode="after")
    def _current_payload_key_is_listed(self) -> Settings:
        if self.payload_key_id is not None:
            if self.payload_keys is None:
                raise ValueError("PAYLOAD_KEY_ID is set but PAYLOAD_KEYS is not")
            known = parse_payload_keys(self.payload_keys.get_secret_value())
            if self.payload_key_id not in known:
                raise ValueError(f"PAYLOAD_KEY_ID {self.payload_key_id!r} is not in PAYLOAD_KEYS ({', '.join(known)})")
        return self

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        for name in ("secret_key", "stripe_secret_key", "stripe_webhook_secret", "smtp_password", "alertmanager_token"):
            value: SecretStr | None = getattr(self, name)
            if value is not None and PLACEHOLDER_MARK in value.get_secret_value().lower():
                raise ValueError(f"{name.upper()} is still the placeholder of .env.example; set the real value")
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if key.lower() in PLACEHOLDER_SECRETS or len(key) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} characters in production"
            )
        missing = [n for n in ("database_url", "redis_url", "temporal_address", "smtp_host") if not getattr(self, n)]
        if missing:
            raise ValueError(f"production needs external services; unset: {', '.join(n.upper() for n in missing)}")
        stripe_key = self.stripe_secret_key.get_secret_value() if self.stripe_secret_key else ""
        if stripe_key == DEV_STRIPE_SECRET_KEY or not stripe_key.startswith(("sk_", "rk_")):
            raise ValueError("STRIPE_SECRET_KEY must be set to a real Stripe secret key (sk_… or rk_…) in production")
        webhook_secret = self.stripe_webhook_secret.get_secret_value() if self.stripe_webhook_secret else ""
        if webhook_secret == DEV_STRIPE_WEBHOOK_SECRET or not webhook_secret.startswith("whsec_"):
            # the dev secret is public (it is in this repo): with it anyone could forge Stripe webhooks
            raise ValueError(
                "STRIPE_WEBHOOK_SECRET must be set to the endpoint's signing secret (whsec_…) in production"
            )
        previous = self.stripe_webhook_secret_previous.get_secret_value() if self.stripe_webhook_secret_previous else ""
        if previous == DEV_STRIPE_WEBHOOK_SECRET:  # as public as above: it would keep forgery open
            raise ValueError("STRIPE_WEBHOOK_SECRET_PREVIOUS must not be the development secret in production")
        if self.payload_keys is None:
            raise ValueError(
                "PAYLOAD_KEYS must be set in production (`id:base64key`, a 32-byte key: `openssl rand -base64 32`); "
                "it encrypts every Temporal payload"
            )
        if self.codec_allow_local_ui:
            raise ValueError("CODEC_ALLOW_LOCAL_UI is a development setting; it must not be set in production")
        if self.bench_telemetry_off:
            raise ValueError("BENCH_TELEMETRY_OFF is a benchmark setting; it must not be set in production")
        return self

    # --- derived values ---
    def saga_retry_policies(self) -> dict[str, dict[str, float]]:
        """What a saga started now records in its input: `models.retry_policies.SagaRetryPolicies`' fields."""
        return {
            "step_database": self.retry_database.model_dump(),
            "step_stripe": self.retry_stripe.model_dump(),
            "compensation_database": self.retry_compensation_database.model_dump(),
            "compensation_stripe": self.retry_compensation_stripe.model_dump(),
        }

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def redis_target(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def stripe_base(self) -> str:
        """Where the Stripe SDK sends requests: STRIPE_API_BASE, else api.stripe.com (the dev stack sets it)."""
        return (self.stripe_api_base or STRIPE_API_BASE).rstrip("/")

    @property
    def allow_private_webhook_targets(self) -> bool:
        if self.webhook_allow_private_targets is not None:
            return self.webhook_allow_private_targets
        return self.environment == "development"

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(c.strip(), strict=False) for c in self.trusted_proxies.split(",") if c.strip()]

    @property
    def codec_origins(self) -> list[str]:
        """Origins whose browser requests /codec accepts (CORS); the embedded UI's in development by default."""
        configured = [o.strip().rstrip("/") for o in self.codec_cors_origins.split(",") if o.strip()]
        if configured or self.environment == "production":
            return configured
        return self.local_ui_origins

    @property
    def local_ui_origins(self) -> list[str]:
        return [f"http://127.0.0.1:{self.temporal_ui_port}", f"http://localhost:{self.temporal_ui_port}"]

    @property
    def codec_local_ui_allowed(self) -> bool:
        if self.environment == "production":
            return False
        return True if self.codec_allow_local_ui is None else self.codec_allow_local_ui

    def payload_keyring(self) -> tuple[str, dict[str, bytes]]:
        """(current key id, every key by id). In development without PAYLOAD_KEYS: one key derived from the
        master secret, its id a fingerprint of it (`dev-…`), so a changed SECRET_KEY names the key it lacks."""
        if self.payload_keys is not None:
            keys = parse_payload_keys(self.payload_keys.get_secret_value())
            return self.payload_key_id or next(iter(keys)), keys
        key = self.derived_key("payload-encryption")
        key_id = "dev-" + hashlib.sha256(key).hexdigest()[:8]
        return key_id, {key_id: key}

    def secret_bytes(self) -> bytes:
        """The master secret; in development it is generated once into the data dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()

    def derived_key(self, purpose: str) -> bytes:
        """One key per purpose (JWT signing, verification tokens) from the single master secret."""
        return hmac.new(self.secret_bytes(), purpose.encode(), hashlib.sha256).digest()


PAYLOAD_KEY_BYTES = 32  # AES-256


def parse_payload_keys(value: str) -> dict[str, bytes]:
    """`id:base64key,id2:base64key` → {id: key}, in the order given. Errors name the entry, never key material."""
    keys: dict[str, bytes] = {}
    for position, entry in enumerate((e.strip() for e in value.split(",") if e.strip()), start=1):
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise ValueError(f"PAYLOAD_KEYS entry {position} is not `id:base64key`")
        if key_id in keys:
            raise ValueError(f"PAYLOAD_KEYS lists key id {key_id!r} twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise ValueError(f"PAYLOAD_KEYS key {key_id!r} is not valid base64") from None
        if len(key) != PAYLOAD_KEY_BYTES:
            raise ValueError(f"PAYLOAD_KEYS key {key_id!r} must be {PAYLOAD_KEY_BYTES} bytes (AES-256), not {len(key)}")
        keys[key_id] = key
    if not keys:
        raise ValueError("PAYLOAD_KEYS is empty")
    return keys


@lru_cache
def get_settings() -> Settings:
    return Settings()
