"""One module per source. Each collector returns samples; none knows Prometheus or HTTP."""
