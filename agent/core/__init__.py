"""The core every layer imports: samples, facts, the metric catalogue, the state and its signals, the exposition format."""
