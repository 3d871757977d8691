"""The running sidecar: the scheduler, the HTTP server, the canary and the drain, assembled by `sidecar.Sidecar`."""
