"""dynamo-sidecar: a per-pod observability sidecar for NVIDIA Dynamo."""

__version__ = "0.1.0"
