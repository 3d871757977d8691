"""Signals to findings: a rule catalogue evaluated over what collectors already gathered."""

from agent.diagnose.engine import diagnose
from agent.diagnose.model import SCHEMA_VERSION, Finding

__all__ = ["SCHEMA_VERSION", "Finding", "diagnose"]
