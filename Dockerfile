# The registry's image: gunicorn serving the package, configured by REGISTRY_* variables.
# Build: docker build -t provider-registry .   Run: see docker-compose.yml.

# Build stage: wheels of the package and of its pinned dependencies (setup.cfg).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[snapshot]'

# Run stage: the wheels installed offline, no build tools, a non-root user.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGISTRY_CONFIG=/app/configs/config.yaml \
    REGISTRY_BIND_HOST=0.0.0.0 \
    REGISTRY_PORT=8002 \
    XDG_RUNTIME_DIR=/tmp
RUN groupadd --system --gid 10001 registry \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home registry
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels
COPY configs ./configs
# Numeric, so that runtimes can verify it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 8002
# provider-registry healthcheck: exit 0 while /health answers 200 (Redis reachable).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["provider-registry", "healthcheck"]
# gunicorn is PID 1 and gets SIGTERM from `docker stop`: the instance leaves Consul, then
# drains its requests (allow more than gunicorn's 20 s graceful timeout: stop_grace_period).
ENTRYPOINT ["gunicorn", "--config", "python:app.gunicorn_conf", "app.wsgi:app"]
