# dynamo-sidecar image: multi-stage, slim Python, non-root, no compilers in the final image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY collectors ./collectors
COPY exporters ./exporters
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
# UID 1000 matches the usual Dynamo container user, which lets the sidecar read
# /proc/<pid>/* of the Dynamo processes in a shared process namespace.
RUN useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin sidecar
USER 1000
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 9469
HEALTHCHECK NONE
ENTRYPOINT ["dynamo-sidecar"]
CMD ["run"]
