"""A simulated Dynamo frontend and worker built from a real Dynamo's recorded responses."""

from agent.dynamo_sim.server import DynamoSim, Faults

__all__ = ["DynamoSim", "Faults"]
