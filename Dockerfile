# The app image: `prognet api` by default, `prognet worker` / `prognet migrate` by command override.
# Only the runtime: `pip install .` (no dev/test extras) and no prognet_dev/, so no embedded server is in it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
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
RUN pip install . && useradd --system --home /app prognet && mkdir -p /data && chown prognet /data

USER prognet
ENV PROGNET_DATA_DIR=/data API_HOST=0.0.0.0 API_PORT=8000
EXPOSE 8000
CMD ["prognet", "api"]
