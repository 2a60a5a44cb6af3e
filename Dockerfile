# Darkroom worker image. Build: docker build -t darkroom .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN pip install --no-cache-dir uv

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY schemas ./schemas
COPY agents ./agents
COPY processors ./processors
COPY sinks ./sinks
RUN uv sync --frozen --no-dev

RUN useradd --create-home --uid 10001 darkroom && mkdir -p /data && chown darkroom /data
USER darkroom
ENV DARKROOM_DATA_DIR=/data
ENTRYPOINT ["darkroom"]
CMD ["worker"]
