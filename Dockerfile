# dynamo-sidecar image: multi-stage. The runtime layers hold Python and the sidecar's venv,
# and nothing to build or install with: no compiler, no pip, setuptools or wheel.
#
# BASE is any Debian-like image. The default is python:3.11-slim pinned by its multi-arch
# digest, as two public projects pin it (no registry is reachable where this file is tested,
# so the digest was not pulled here). To move to a newer base, or to a mirror:
#   podman pull python:3.11-slim && podman image inspect --format '{{.Digest}}' python:3.11-slim
#   podman build --build-arg BASE=python:3.11-slim@sha256:<that digest> -t <registry>/dynamo-sidecar:0.1.0 .
# A base without Python (a Debian minbase, as the tests use) gets Debian's python3 (3.11 on
# bookworm) from apt.
ARG BASE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${BASE} AS build
# The Debian release decides the versions; pinning them here would break every other base.
# hadolint ignore=DL3008
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY agent ./agent
COPY collectors ./collectors
COPY exporters ./exporters
# PIP_CERT: a CA bundle for pip where a proxy re-signs TLS (build with --volume and
# --build-arg PIP_CERT=/path); empty means pip's own bundle.
ARG PIP_CERT=
# The installer lives in /opt/tools, which stays in this stage; /opt/venv gets the sidecar
# and its dependencies only (pip --python installs into another interpreter's environment).
RUN python3 -m venv /opt/tools \
 && python3 -m venv --without-pip /opt/venv \
 && /opt/tools/bin/pip --python /opt/venv/bin/python install --no-cache-dir . \
 && rm -f /opt/venv/bin/activate* /opt/venv/bin/Activate.ps1

FROM ${BASE}
# As above: the base's Debian release decides python3's version. Nothing at run time
# installs anything, so the base's own installers go too (python:*-slim ships pip and
# setuptools; ensurepip's bundled wheels are pip again).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi \
 && if python3 -m pip --version >/dev/null 2>&1; then \
      python3 -m pip uninstall --yes --quiet pip setuptools wheel; \
    fi \
 && rm -rf /usr/local/lib/python3*/ensurepip/_bundled /usr/lib/python3*/ensurepip/_bundled \
 && useradd --uid 1000 --gid 0 --no-create-home --shell /usr/sbin/nologin sidecar
COPY --from=build /opt/venv /opt/venv
# uid 1000 and gid 0 are Dynamo's container user and group. Linux lets the sidecar read the
# Dynamo processes' fd limit, fd links (their sockets) and environ (shared process namespace)
# only when both match; gid 0 is the root group, not root: the user stays unprivileged.
USER 1000:0
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="dynamo-sidecar" \
      org.opencontainers.image.description="Per-pod observability sidecar for NVIDIA Dynamo" \
      org.opencontainers.image.licenses="Apache-2.0"
EXPOSE 9469
HEALTHCHECK NONE
ENTRYPOINT ["dynamo-sidecar"]
CMD ["run"]
