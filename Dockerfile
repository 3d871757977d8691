# dynamo-sidecar image: multi-stage, non-root, no compilers in the final image.
# BASE is any Debian-like image; python:3.11-slim by default. A base without Python (a Debian
# minbase) gets Debian's python3 (3.11 on bookworm) from apt.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# The Debian release decides the versions; pinning them here would break every other base.
# hadolint ignore=DL3008
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY collectors ./collectors
COPY exporters ./exporters
# PIP_CERT: a CA bundle for pip where a proxy re-signs TLS (build with --volume and
# --build-arg PIP_CERT=/path); empty means pip's own bundle.
ARG PIP_CERT=
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM ${BASE}
# As above: the base's Debian release decides python3's version.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin sidecar
COPY --from=build /opt/venv /opt/venv
# UID 1000 matches the usual Dynamo container user, which lets the sidecar read
# /proc/<pid>/* of the Dynamo processes in a shared process namespace.
USER 1000
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 9469
HEALTHCHECK NONE
ENTRYPOINT ["dynamo-sidecar"]
CMD ["run"]
