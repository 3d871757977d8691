"""What the OTLP exporter is configured with, shared by its two halves: exporters/otlp.py
(always imported) and exporters/otlp_sdk.py (the OpenTelemetry SDK, imported only when traces
are on)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.config import OtlpOptions, otlp_options

if TYPE_CHECKING:
    from agent.config import Config

GRPC = "grpc"
HTTP = "http/protobuf"
SERVICE_NAME = "dynamo-sidecar"

# Downward-API env names the Helm chart sets, and the OTel resource keys they fill.
K8S_ENV = {
    "k8s.pod.name": ("POD_NAME", "K8S_POD_NAME"),
    "k8s.namespace.name": ("POD_NAMESPACE", "K8S_NAMESPACE_NAME"),
    "k8s.node.name": ("NODE_NAME", "K8S_NODE_NAME"),
    "k8s.container.name": ("CONTAINER_NAME", "K8S_CONTAINER_NAME"),
}


@dataclass(frozen=True)
class OtlpSettings:
    """Everything the exporter needs; `endpoint` "" means traces are off."""

    endpoint: str = ""
    protocol: str = GRPC
    timeout: float = 10.0
    options: OtlpOptions = field(default_factory=OtlpOptions)

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> OtlpSettings:
        environ = os.environ if environ is None else environ
        return cls(
            endpoint=config.otlp_endpoint,
            protocol=config.otlp_protocol,
            timeout=config.otlp_timeout,
            # load_config has already printed this env's warnings
            options=otlp_options(environ) if config.otlp_endpoint else OtlpOptions(),
        )
