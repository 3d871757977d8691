"""Exit codes of every `dynamo-sidecar` subcommand: one scheme, each code one meaning.

diagnose and audit follow the monitoring-plugin convention (0 ok, 1 warning, 2 critical,
3 unknown); usage and input errors take sysexits' EX_USAGE so they never read as "critical".
The table users read is docs/cli.md.
"""

from __future__ import annotations

from typing import Final

OK: Final = 0
WARNING: Final = 1  # diagnose/audit: a warning finding; verify: goals missed; canary: a probe failed
CRITICAL: Final = 2  # diagnose/audit: a critical finding
UNKNOWN: Final = 3  # the tool could not look: what it needed to read was unreachable or unreadable
USAGE: Final = 64  # a bad flag, config value or input file (sysexits EX_USAGE)
INTERNAL: Final = 70  # an unexpected error, reported in one line (sysexits EX_SOFTWARE)
INTERRUPTED: Final = 130  # Ctrl-C

# A report's status -> the exit code that says it.
BY_STATUS: Final = {"ok": OK, "warning": WARNING, "critical": CRITICAL, "unknown": UNKNOWN}
