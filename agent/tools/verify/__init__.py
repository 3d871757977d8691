"""`dynamo-sidecar verify`: the fault drill (standard, overload and recovery phases)."""
