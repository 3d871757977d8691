"""NVIDIA XID codes by the class an operator acts on (NVIDIA's XID catalogue): read by the GPU
collector and by the GPU rules."""

from __future__ import annotations

# XID classes an operator acts on (NVIDIA's XID catalogue).
XID_CLASSES: dict[int, tuple[str, str]] = {
    13: (
        "application",
        "graphics engine exception: usually an application fault (bad kernel, out-of-range access)",
    ),
    31: ("application", "GPU memory page fault: usually an application fault"),
    43: ("application", "GPU stopped processing: the application hit a fault"),
    45: ("application", "preemptive cleanup after an earlier error"),
    48: ("memory", "double-bit ECC error: uncorrectable memory error; the GPU needs a reset"),
    61: ("firmware", "internal micro-controller breakpoint/warning"),
    62: ("firmware", "internal micro-controller halt"),
    63: ("memory", "ECC page retirement or row remapping recorded"),
    64: ("memory", "ECC page retirement or row remapping failed"),
    74: ("nvlink", "NVLink error"),
    79: ("bus", "GPU has fallen off the bus: drain the node and check power, PCIe and the board"),
    92: ("memory", "high single-bit ECC error rate"),
    94: ("memory", "contained ECC error: the affected application was stopped; others continue"),
    95: ("memory", "uncontained ECC error: every application on the GPU is affected; reset it"),
    119: ("firmware", "GSP RPC timeout: the GPU System Processor stopped answering; reset the GPU"),
    120: ("firmware", "GSP error"),
}


def xid_class(xid: int) -> tuple[str, str]:
    return XID_CLASSES.get(xid, ("other", f"XID {xid}"))
