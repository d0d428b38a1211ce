# kube-dispatcher: the `dispatcher` command, serving its API on :8080 (`dispatcher serve`).
#
# Two stages from the same pinned base image (keep both FROM lines equal: the virtual
# environment built in the first needs the same /usr/local/bin/python3.11 in the second):
#   builder  builds the project wheel and installs it with its dependencies (and the
#            `tracing` extra, so traces can be switched on by settings) into /opt/venv,
#            using the base image's pip from outside the venv (the venv gets no pip);
#   runtime  copies only /opt/venv; no compiler, no pip, no caches, no source tree.
#
# The runtime is read-only-root-filesystem friendly: bytecode is compiled at install time,
# nothing is written outside /tmp (HOME=/tmp; mount an emptyDir there), and it runs as the
# numeric non-root user 10001 so `runAsNonRoot` can verify it. Health is checked by
# Kubernetes probes (/healthz, /readyz), so there is no HEALTHCHECK.
#
# tests/deploy/test_dockerfile.py replays the builder's RUN steps in a temporary venv; keep
# them relocatable: paths relative to WORKDIR or under $VIRTUAL_ENV only.

# ------------------------------------------------------------------------------- builder
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv

WORKDIR /src

# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml ./
COPY dispatcher/ ./dispatcher/

RUN python -m venv --without-pip "$VIRTUAL_ENV" \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir dist . \
    && wheel="$(ls dist/*.whl)" \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir --compile "${wheel}[tracing]"

# ------------------------------------------------------------------------------- runtime
FROM python:3.11.13-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="kube-dispatcher" \
      org.opencontainers.image.description="Routes batch tasks (mostly Airflow GPU tasks) to the right Kubernetes cluster." \
      org.opencontainers.image.source="https://github.com/example/kube-dispatcher"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The runtime needs no package tools: drop the base image's pip, setuptools and wheel.
RUN groupadd --system --gid 10001 dispatcher \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin dispatcher \
    && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && rm -rf /root/.cache

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

ENTRYPOINT ["dispatcher"]
CMD ["serve"]
