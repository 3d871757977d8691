"""The command-line tools beside the sidecar: inject and the webhook, audit, verify, the demo and the docs generator."""
