"""One handle per metric the sidecar emits. GENERATED from agent/core/catalogue.py by
`python -m agent.tools.docs`: do not edit (tests/test_lint_and_docs.py checks it is current).

`X.sample(value, label=...)` takes exactly the declared labels (mypy checks the names;
agent/core/handles.py checks them at runtime); `X.selector(label=...)` formats an evidence
selector; `X.name` is the full name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.handles import Handle

if TYPE_CHECKING:
    from agent.core.handles import LabelValue
    from agent.core.samples import Sample


class _BuildInfo(Handle):
    """gauge: Always 1; the sidecar's version and Python."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, version: LabelValue, python: LabelValue) -> Sample: ...
        def selector(self, *, version: LabelValue = ..., python: LabelValue = ...) -> str: ...


BUILD_INFO = _BuildInfo("dynamo_sidecar_build_info")


class _StartTimeSeconds(Handle):
    """gauge, seconds: Unix time the sidecar started."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


START_TIME_SECONDS = _StartTimeSeconds("dynamo_sidecar_start_time_seconds")


class _Ready(Handle):
    """gauge: 1 once every collector has completed one cycle."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


READY = _Ready("dynamo_sidecar_ready")


class _HttpConnections(Handle):
    """gauge: Open connections to the sidecar's HTTP server."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


HTTP_CONNECTIONS = _HttpConnections("dynamo_sidecar_http_connections")


class _HttpConnectionsRefusedTotal(Handle):
    """counter: Connections closed at once: max_connections (or the peer's three quarters of them) were open and none was idle."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


HTTP_CONNECTIONS_REFUSED_TOTAL = _HttpConnectionsRefusedTotal("dynamo_sidecar_http_connections_refused_total")


class _HttpConnectionsShedTotal(Handle):
    """counter: Idle connections closed to make room for a new one (the oldest of the peer holding the most)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


HTTP_CONNECTIONS_SHED_TOTAL = _HttpConnectionsShedTotal("dynamo_sidecar_http_connections_shed_total")


class _UndeclaredEmissionsTotal(Handle):
    """counter: Emissions of a metric the catalogue does not declare, or with labels it does not declare (a bug: logged once per metric, the sample kept)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, metric: LabelValue) -> Sample: ...
        def selector(self, *, metric: LabelValue = ...) -> str: ...


UNDECLARED_EMISSIONS_TOTAL = _UndeclaredEmissionsTotal("dynamo_sidecar_undeclared_emissions_total")


class _Draining(Handle):
    """gauge: 1 while a drain is in progress."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DRAINING = _Draining("dynamo_sidecar_draining")


class _Quiet(Handle):
    """gauge: 1 while the pod is quiet and the collectors other than health and logs run quiet_slowdown times slower."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


QUIET = _Quiet("dynamo_sidecar_quiet")


class _EvaluationsSkippedTotal(Handle):
    """counter: Collection cycles of a quiet pod whose findings evaluation was skipped: nothing the rules read had changed since the last one, less than the quiet pace before."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


EVALUATIONS_SKIPPED_TOTAL = _EvaluationsSkippedTotal("dynamo_sidecar_evaluations_skipped_total")


class _RendersSkippedTotal(Handle):
    """counter: Collection cycles whose exposition was not rendered: no scraper had asked for /metrics recently (the next scrape renders), or the pod is quiet (rendered at the quiet pace)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


RENDERS_SKIPPED_TOTAL = _RendersSkippedTotal("dynamo_sidecar_renders_skipped_total")


class _CollectorSuccess(Handle):
    """gauge: 1 if the collector's last run succeeded."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, collector: LabelValue) -> Sample: ...
        def selector(self, *, collector: LabelValue = ...) -> str: ...


COLLECTOR_SUCCESS = _CollectorSuccess("dynamo_sidecar_collector_success")


class _CollectorDurationSeconds(Handle):
    """gauge, seconds: Duration of the collector's last run."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, collector: LabelValue) -> Sample: ...
        def selector(self, *, collector: LabelValue = ...) -> str: ...


COLLECTOR_DURATION_SECONDS = _CollectorDurationSeconds("dynamo_sidecar_collector_duration_seconds")


class _CollectorLastSuccessTimestampSeconds(Handle):
    """gauge, seconds: Unix time of the collector's last successful run."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, collector: LabelValue) -> Sample: ...
        def selector(self, *, collector: LabelValue = ...) -> str: ...


COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS = _CollectorLastSuccessTimestampSeconds(
    "dynamo_sidecar_collector_last_success_timestamp_seconds"
)


class _CollectorRunsTotal(Handle):
    """counter: Collector runs by outcome (ok, error, timeout)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, collector: LabelValue, outcome: LabelValue) -> Sample: ...
        def selector(self, *, collector: LabelValue = ..., outcome: LabelValue = ...) -> str: ...


COLLECTOR_RUNS_TOTAL = _CollectorRunsTotal("dynamo_sidecar_collector_runs_total")


class _SeriesDroppedTotal(Handle):
    """counter: Series not stored because a cardinality cap was reached, by metric (past 100 names: metric="_other")."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, metric: LabelValue) -> Sample: ...
        def selector(self, *, metric: LabelValue = ...) -> str: ...


SERIES_DROPPED_TOTAL = _SeriesDroppedTotal("dynamo_sidecar_series_dropped_total")


class _SeriesCapsHitTotal(Handle):
    """counter: Series dropped by which cap: series_per_metric, metric_names, series, memory_budget."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, cap: LabelValue) -> Sample: ...
        def selector(self, *, cap: LabelValue = ...) -> str: ...


SERIES_CAPS_HIT_TOTAL = _SeriesCapsHitTotal("dynamo_sidecar_series_caps_hit_total")


class _HistorySeries(Handle):
    """gauge: Series currently held in the history ring."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


HISTORY_SERIES = _HistorySeries("dynamo_sidecar_history_series")


class _HistoryWindowSeconds(Handle):
    """gauge, seconds: How far back the history ring reaches by configuration."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


HISTORY_WINDOW_SECONDS = _HistoryWindowSeconds("dynamo_sidecar_history_window_seconds")


class _HistoryBytes(Handle):
    """gauge, bytes: Memory the history rings hold (their fixed parts counted at their largest)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


HISTORY_BYTES = _HistoryBytes("dynamo_sidecar_history_bytes")


class _HistoryRefusedTotal(Handle):
    """counter: Series admitted without history because the memory budget could not hold their ring full."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


HISTORY_REFUSED_TOTAL = _HistoryRefusedTotal("dynamo_sidecar_history_refused_total")


class _MemoryBudgetBytes(Handle):
    """gauge, bytes: The state's memory budget (memory_budget; auto: a quarter of the container's limit)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


MEMORY_BUDGET_BYTES = _MemoryBudgetBytes("dynamo_sidecar_memory_budget_bytes")


class _MemoryBudgetUsedBytes(Handle):
    """gauge, bytes: The state's memory as the budget counts it: series, and kept rings at their full reserve."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


MEMORY_BUDGET_USED_BYTES = _MemoryBudgetUsedBytes("dynamo_sidecar_memory_budget_used_bytes")


class _EventsTotal(Handle):
    """counter: Events recorded (health transitions, restarts, XIDs...) by kind."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, kind: LabelValue) -> Sample: ...
        def selector(self, *, kind: LabelValue = ...) -> str: ...


EVENTS_TOTAL = _EventsTotal("dynamo_sidecar_events_total")


class _RuleEvaluationFailuresTotal(Handle):
    """counter: Evaluations of the diagnose rule that raised (its findings missing from that report; the error is in its rule_errors)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, rule: LabelValue) -> Sample: ...
        def selector(self, *, rule: LabelValue = ...) -> str: ...


RULE_EVALUATION_FAILURES_TOTAL = _RuleEvaluationFailuresTotal("dynamo_sidecar_rule_evaluation_failures_total")


class _RuleEvaluationDurationSeconds(Handle):
    """gauge, seconds: How long the diagnose rule's last evaluation took."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, rule: LabelValue) -> Sample: ...
        def selector(self, *, rule: LabelValue = ...) -> str: ...


RULE_EVALUATION_DURATION_SECONDS = _RuleEvaluationDurationSeconds(
    "dynamo_sidecar_rule_evaluation_duration_seconds"
)


class _ExpositionRenderSeconds(Handle):
    """gauge, seconds: Time the last /metrics render took on the event loop, its steps summed."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


EXPOSITION_RENDER_SECONDS = _ExpositionRenderSeconds("dynamo_sidecar_exposition_render_seconds")


class _ExpositionRenderLongestStepSeconds(Handle):
    """gauge, seconds: Longest step of the last render: what a scrape arriving mid-render waits at most."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


EXPOSITION_RENDER_LONGEST_STEP_SECONDS = _ExpositionRenderLongestStepSeconds(
    "dynamo_sidecar_exposition_render_longest_step_seconds"
)


class _DrainDurationSeconds(Handle):
    """gauge, seconds: Duration of the current or last drain."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DRAIN_DURATION_SECONDS = _DrainDurationSeconds("dynamo_sidecar_drain_duration_seconds")


class _DrainInflightAtStart(Handle):
    """gauge: Dynamo in-flight requests when the drain began."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DRAIN_INFLIGHT_AT_START = _DrainInflightAtStart("dynamo_sidecar_drain_inflight_at_start")


class _DrainInflightAtEnd(Handle):
    """gauge: Dynamo in-flight requests when the drain ended (or now)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DRAIN_INFLIGHT_AT_END = _DrainInflightAtEnd("dynamo_sidecar_drain_inflight_at_end")


class _DrainRequestsCompleted(Handle):
    """gauge: Frontend requests that completed during the drain."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DRAIN_REQUESTS_COMPLETED = _DrainRequestsCompleted("dynamo_sidecar_drain_requests_completed")


class _DrainRequestsFailed(Handle):
    """gauge: Frontend requests that failed during the drain."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DRAIN_REQUESTS_FAILED = _DrainRequestsFailed("dynamo_sidecar_drain_requests_failed")


class _SloTarget(Handle):
    """gauge: Configured SLO target by objective (ttft_p99 and itl_p99 in seconds, error_rate as a ratio)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, objective: LabelValue) -> Sample: ...
        def selector(self, *, objective: LabelValue = ...) -> str: ...


SLO_TARGET = _SloTarget("dynamo_sidecar_slo_target")


class _SloObserved(Handle):
    """gauge: The objective's value over the signal window, as the slo_breach rule judges it."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, objective: LabelValue) -> Sample: ...
        def selector(self, *, objective: LabelValue = ...) -> str: ...


SLO_OBSERVED = _SloObserved("dynamo_sidecar_slo_observed")


class _SloObservations(Handle):
    """gauge: Observations (requests) inside the signal window behind slo_observed, by objective."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, objective: LabelValue) -> Sample: ...
        def selector(self, *, objective: LabelValue = ...) -> str: ...


SLO_OBSERVATIONS = _SloObservations("dynamo_sidecar_slo_observations")


class _DrainReason(Handle):
    """gauge: 1 for why the drain ended: inflight_zero, process_exited, deadline, second_signal, nothing_to_drain."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, reason: LabelValue) -> Sample: ...
        def selector(self, *, reason: LabelValue = ...) -> str: ...


DRAIN_REASON = _DrainReason("dynamo_sidecar_drain_reason")


class _ProcessesMatched(Handle):
    """gauge: Dynamo processes found in the pod's process namespace."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


PROCESSES_MATCHED = _ProcessesMatched("dynamo_sidecar_processes_matched")


class _ProcessCpuSecondsTotal(Handle):
    """counter, seconds: CPU time consumed by the Dynamo process."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, process: LabelValue, pid: LabelValue, mode: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, process: LabelValue = ..., pid: LabelValue = ..., mode: LabelValue = ...
        ) -> str: ...


PROCESS_CPU_SECONDS_TOTAL = _ProcessCpuSecondsTotal("dynamo_sidecar_process_cpu_seconds_total")


class _ProcessResidentMemoryBytes(Handle):
    """gauge, bytes: Resident set size."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_RESIDENT_MEMORY_BYTES = _ProcessResidentMemoryBytes("dynamo_sidecar_process_resident_memory_bytes")


class _ProcessVirtualMemoryBytes(Handle):
    """gauge, bytes: Virtual memory size."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_VIRTUAL_MEMORY_BYTES = _ProcessVirtualMemoryBytes("dynamo_sidecar_process_virtual_memory_bytes")


class _ProcessThreads(Handle):
    """gauge: Number of OS threads."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_THREADS = _ProcessThreads("dynamo_sidecar_process_threads")


class _ProcessOpenFds(Handle):
    """gauge: Open file descriptors."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_OPEN_FDS = _ProcessOpenFds("dynamo_sidecar_process_open_fds")


class _ProcessMaxFds(Handle):
    """gauge: Soft limit on open file descriptors (RLIMIT_NOFILE)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_MAX_FDS = _ProcessMaxFds("dynamo_sidecar_process_max_fds")


class _ProcessContextSwitchesTotal(Handle):
    """counter: Context switches by kind (voluntary, involuntary)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, process: LabelValue, pid: LabelValue, kind: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, process: LabelValue = ..., pid: LabelValue = ..., kind: LabelValue = ...
        ) -> str: ...


PROCESS_CONTEXT_SWITCHES_TOTAL = _ProcessContextSwitchesTotal("dynamo_sidecar_process_context_switches_total")


class _ProcessChildren(Handle):
    """gauge: Number of child processes (recursive)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_CHILDREN = _ProcessChildren("dynamo_sidecar_process_children")


class _ProcessStartTimeSeconds(Handle):
    """gauge, seconds: Unix time the process started."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_START_TIME_SECONDS = _ProcessStartTimeSeconds("dynamo_sidecar_process_start_time_seconds")


class _ProcessUptimeSeconds(Handle):
    """gauge, seconds: Seconds since the process started."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, process: LabelValue, pid: LabelValue) -> Sample: ...
        def selector(self, *, process: LabelValue = ..., pid: LabelValue = ...) -> str: ...


PROCESS_UPTIME_SECONDS = _ProcessUptimeSeconds("dynamo_sidecar_process_uptime_seconds")


class _ProcessState(Handle):
    """gauge: 1 for the process's scheduler state (R, S, D uninterruptible, T stopped, t traced, Z, X, I)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, process: LabelValue, pid: LabelValue, state: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, process: LabelValue = ..., pid: LabelValue = ..., state: LabelValue = ...
        ) -> str: ...


PROCESS_STATE = _ProcessState("dynamo_sidecar_process_state")


class _CgroupInfo(Handle):
    """gauge: Always 1; which cgroup is watched and its version."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, version: LabelValue, path: LabelValue, scope: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, version: LabelValue = ..., path: LabelValue = ..., scope: LabelValue = ...
        ) -> str: ...


CGROUP_INFO = _CgroupInfo("dynamo_sidecar_cgroup_info")


class _CgroupMemoryUsageBytes(Handle):
    """gauge, bytes: Memory charged to the cgroup."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


CGROUP_MEMORY_USAGE_BYTES = _CgroupMemoryUsageBytes("dynamo_sidecar_cgroup_memory_usage_bytes")


class _CgroupMemoryLimitBytes(Handle):
    """gauge, bytes: Memory limit of the cgroup (absent when unlimited)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


CGROUP_MEMORY_LIMIT_BYTES = _CgroupMemoryLimitBytes("dynamo_sidecar_cgroup_memory_limit_bytes")


class _CgroupMemoryEventsTotal(Handle):
    """counter: cgroup memory events (oom, oom_kill, max, high)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, event: LabelValue) -> Sample: ...
        def selector(self, *, event: LabelValue = ...) -> str: ...


CGROUP_MEMORY_EVENTS_TOTAL = _CgroupMemoryEventsTotal("dynamo_sidecar_cgroup_memory_events_total")


class _CgroupCpuUsageSecondsTotal(Handle):
    """counter, seconds: CPU time consumed by the cgroup."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


CGROUP_CPU_USAGE_SECONDS_TOTAL = _CgroupCpuUsageSecondsTotal("dynamo_sidecar_cgroup_cpu_usage_seconds_total")


class _CgroupCpuLimitCores(Handle):
    """gauge, cores: CPU quota in cores (absent when unlimited)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


CGROUP_CPU_LIMIT_CORES = _CgroupCpuLimitCores("dynamo_sidecar_cgroup_cpu_limit_cores")


class _CgroupCpuPeriodsTotal(Handle):
    """counter: CFS enforcement periods elapsed."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


CGROUP_CPU_PERIODS_TOTAL = _CgroupCpuPeriodsTotal("dynamo_sidecar_cgroup_cpu_periods_total")


class _CgroupCpuThrottledPeriodsTotal(Handle):
    """counter: CFS periods in which the cgroup was throttled."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


CGROUP_CPU_THROTTLED_PERIODS_TOTAL = _CgroupCpuThrottledPeriodsTotal(
    "dynamo_sidecar_cgroup_cpu_throttled_periods_total"
)


class _CgroupCpuThrottledSecondsTotal(Handle):
    """counter, seconds: Time the cgroup spent throttled."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


CGROUP_CPU_THROTTLED_SECONDS_TOTAL = _CgroupCpuThrottledSecondsTotal(
    "dynamo_sidecar_cgroup_cpu_throttled_seconds_total"
)


class _PressureStallRatio(Handle):
    """gauge, ratio: PSI stall share over the window (avg10/avg60/avg300 as 0-1)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self,
            value: float,
            /,
            *,
            scope: LabelValue,
            resource: LabelValue,
            kind: LabelValue,
            window: LabelValue,
        ) -> Sample: ...
        def selector(
            self,
            *,
            scope: LabelValue = ...,
            resource: LabelValue = ...,
            kind: LabelValue = ...,
            window: LabelValue = ...,
        ) -> str: ...


PRESSURE_STALL_RATIO = _PressureStallRatio("dynamo_sidecar_pressure_stall_ratio")


class _PressureStalledSecondsTotal(Handle):
    """counter, seconds: PSI total stall time."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, scope: LabelValue, resource: LabelValue, kind: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, scope: LabelValue = ..., resource: LabelValue = ..., kind: LabelValue = ...
        ) -> str: ...


PRESSURE_STALLED_SECONDS_TOTAL = _PressureStalledSecondsTotal("dynamo_sidecar_pressure_stalled_seconds_total")


class _EndpointUp(Handle):
    """gauge: 1 if the Dynamo endpoint answered 2xx with a healthy status."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue, probe: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ..., probe: LabelValue = ...) -> str: ...


ENDPOINT_UP = _EndpointUp("dynamo_sidecar_endpoint_up")


class _EndpointHttpStatusCode(Handle):
    """gauge: HTTP status of the last probe (0 when no response)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue, probe: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ..., probe: LabelValue = ...) -> str: ...


ENDPOINT_HTTP_STATUS_CODE = _EndpointHttpStatusCode("dynamo_sidecar_endpoint_http_status_code")


class _EndpointResponseSeconds(Handle):
    """gauge, seconds: Response time of the last probe."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue, probe: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ..., probe: LabelValue = ...) -> str: ...


ENDPOINT_RESPONSE_SECONDS = _EndpointResponseSeconds("dynamo_sidecar_endpoint_response_seconds")


class _EndpointProbeOutcome(Handle):
    """gauge: 1 for the last probe's outcome (ok, unhealthy, refused, timeout, http_error, malformed, error)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, endpoint: LabelValue, probe: LabelValue, outcome: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, endpoint: LabelValue = ..., probe: LabelValue = ..., outcome: LabelValue = ...
        ) -> str: ...


ENDPOINT_PROBE_OUTCOME = _EndpointProbeOutcome("dynamo_sidecar_endpoint_probe_outcome")


class _EndpointStatus(Handle):
    """gauge: 1 for the status string in the last health body (healthy, ready, notready, ...)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, endpoint: LabelValue, probe: LabelValue, status: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, endpoint: LabelValue = ..., probe: LabelValue = ..., status: LabelValue = ...
        ) -> str: ...


ENDPOINT_STATUS = _EndpointStatus("dynamo_sidecar_endpoint_status")


class _EndpointProbesTotal(Handle):
    """counter: Health probes by outcome."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, endpoint: LabelValue, probe: LabelValue, outcome: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, endpoint: LabelValue = ..., probe: LabelValue = ..., outcome: LabelValue = ...
        ) -> str: ...


ENDPOINT_PROBES_TOTAL = _EndpointProbesTotal("dynamo_sidecar_endpoint_probes_total")


class _EndpointTransitionsTotal(Handle):
    """counter: Changes of the probe's status since the sidecar started."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue, probe: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ..., probe: LabelValue = ...) -> str: ...


ENDPOINT_TRANSITIONS_TOTAL = _EndpointTransitionsTotal("dynamo_sidecar_endpoint_transitions_total")


class _FrontendInstances(Handle):
    """gauge: Distinct worker instance ids the frontend's /health lists."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


FRONTEND_INSTANCES = _FrontendInstances("dynamo_sidecar_frontend_instances")


class _FrontendModels(Handle):
    """gauge: Models the frontend's /v1/models lists."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


FRONTEND_MODELS = _FrontendModels("dynamo_sidecar_frontend_models")


class _FrontendRegisteredEndpoints(Handle):
    """gauge: dyn:// endpoints the frontend's /health lists."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


FRONTEND_REGISTERED_ENDPOINTS = _FrontendRegisteredEndpoints("dynamo_sidecar_frontend_registered_endpoints")


class _WorkerEndpointReady(Handle):
    """gauge: 1 if the worker's /health marks this Dynamo endpoint ready."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue, dynamo_endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ..., dynamo_endpoint: LabelValue = ...) -> str: ...


WORKER_ENDPOINT_READY = _WorkerEndpointReady("dynamo_sidecar_worker_endpoint_ready")


class _WorkerUptimeSeconds(Handle):
    """gauge, seconds: Worker runtime uptime from its /health body."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


WORKER_UPTIME_SECONDS = _WorkerUptimeSeconds("dynamo_sidecar_worker_uptime_seconds")


class _WorkerRestartsTotal(Handle):
    """counter: Worker restarts seen as uptime going backwards."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


WORKER_RESTARTS_TOTAL = _WorkerRestartsTotal("dynamo_sidecar_worker_restarts_total")


class _ScrapeUp(Handle):
    """gauge: 1 if the last scrape of the Dynamo /metrics endpoint parsed."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


SCRAPE_UP = _ScrapeUp("dynamo_sidecar_scrape_up")


class _ScrapeDurationSeconds(Handle):
    """gauge, seconds: Duration of the last scrape of Dynamo /metrics."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


SCRAPE_DURATION_SECONDS = _ScrapeDurationSeconds("dynamo_sidecar_scrape_duration_seconds")


class _ScrapeBytes(Handle):
    """gauge, bytes: Size of the last Dynamo /metrics body."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


SCRAPE_BYTES = _ScrapeBytes("dynamo_sidecar_scrape_bytes")


class _ScrapeSeries(Handle):
    """gauge: Series in the last Dynamo /metrics body."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ...) -> str: ...


SCRAPE_SERIES = _ScrapeSeries("dynamo_sidecar_scrape_series")


class _ScrapeErrorsTotal(Handle):
    """counter: Failed scrapes of Dynamo /metrics by reason."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, endpoint: LabelValue, reason: LabelValue) -> Sample: ...
        def selector(self, *, endpoint: LabelValue = ..., reason: LabelValue = ...) -> str: ...


SCRAPE_ERRORS_TOTAL = _ScrapeErrorsTotal("dynamo_sidecar_scrape_errors_total")


class _PassthroughConflictsTotal(Handle):
    """counter: Dynamo series seen from two sources with the same labels; the first kept."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, metric: LabelValue) -> Sample: ...
        def selector(self, *, metric: LabelValue = ...) -> str: ...


PASSTHROUGH_CONFLICTS_TOTAL = _PassthroughConflictsTotal("dynamo_sidecar_passthrough_conflicts_total")


class _TcpSockets(Handle):
    """gauge: TCP sockets by state, peer role (etcd, nats, frontend, worker_system, configured roles, other) and direction (in, out, listen)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, state: LabelValue, peer: LabelValue, direction: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, state: LabelValue = ..., peer: LabelValue = ..., direction: LabelValue = ...
        ) -> str: ...


TCP_SOCKETS = _TcpSockets("dynamo_sidecar_tcp_sockets")


class _TcpQueueBytes(Handle):
    """gauge, bytes: Bytes in socket send/receive queues, summed per peer role."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, peer: LabelValue, queue: LabelValue) -> Sample: ...
        def selector(self, *, peer: LabelValue = ..., queue: LabelValue = ...) -> str: ...


TCP_QUEUE_BYTES = _TcpQueueBytes("dynamo_sidecar_tcp_queue_bytes")


class _TcpRttSeconds(Handle):
    """gauge, seconds: Mean smoothed RTT of established sockets per peer role (tcp_info)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, peer: LabelValue) -> Sample: ...
        def selector(self, *, peer: LabelValue = ...) -> str: ...


TCP_RTT_SECONDS = _TcpRttSeconds("dynamo_sidecar_tcp_rtt_seconds")


class _TcpSocketRetransmits(Handle):
    """gauge: Retransmitted segments of the current sockets per peer role (tcp_info)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, peer: LabelValue) -> Sample: ...
        def selector(self, *, peer: LabelValue = ...) -> str: ...


TCP_SOCKET_RETRANSMITS = _TcpSocketRetransmits("dynamo_sidecar_tcp_socket_retransmits")


class _TcpSocketLost(Handle):
    """gauge: Segments currently considered lost per peer role (tcp_info)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, peer: LabelValue) -> Sample: ...
        def selector(self, *, peer: LabelValue = ...) -> str: ...


TCP_SOCKET_LOST = _TcpSocketLost("dynamo_sidecar_tcp_socket_lost")


class _TcpListening(Handle):
    """gauge: 1 if the Dynamo port expected in this pod is listening."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, port: LabelValue, role: LabelValue) -> Sample: ...
        def selector(self, *, port: LabelValue = ..., role: LabelValue = ...) -> str: ...


TCP_LISTENING = _TcpListening("dynamo_sidecar_tcp_listening")


class _TcpKernelTotal(Handle):
    """counter: Kernel TCP counters of the pod's namespace (/proc/net/snmp, /proc/net/netstat)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, counter: LabelValue) -> Sample: ...
        def selector(self, *, counter: LabelValue = ...) -> str: ...


TCP_KERNEL_TOTAL = _TcpKernelTotal("dynamo_sidecar_tcp_kernel_total")


class _TcpCollectionMethod(Handle):
    """gauge: 1 for how sockets were read: netlink (sock_diag) or procfs."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, method: LabelValue) -> Sample: ...
        def selector(self, *, method: LabelValue = ...) -> str: ...


TCP_COLLECTION_METHOD = _TcpCollectionMethod("dynamo_sidecar_tcp_collection_method")


class _TcpRetransmitRatio(Handle):
    """gauge, ratio: Retransmitted / sent segments over the window (kernel counters)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, window: LabelValue) -> Sample: ...
        def selector(self, *, window: LabelValue = ...) -> str: ...


TCP_RETRANSMIT_RATIO = _TcpRetransmitRatio("dynamo_sidecar_tcp_retransmit_ratio")


class _ProbeUp(Handle):
    """gauge: 1 if the dependency's last probe succeeded."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, target: LabelValue, role: LabelValue) -> Sample: ...
        def selector(self, *, target: LabelValue = ..., role: LabelValue = ...) -> str: ...


PROBE_UP = _ProbeUp("dynamo_sidecar_probe_up")


class _ProbeOutcome(Handle):
    """gauge: 1 for the last probe outcome: ok, refused, timeout, dns_error, dns_timeout, unreachable, http_error, unhealthy (etcd /health says false), error."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, target: LabelValue, role: LabelValue, outcome: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, target: LabelValue = ..., role: LabelValue = ..., outcome: LabelValue = ...
        ) -> str: ...


PROBE_OUTCOME = _ProbeOutcome("dynamo_sidecar_probe_outcome")


class _ProbeDnsSeconds(Handle):
    """gauge, seconds: Name resolution time of the last probe."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, target: LabelValue, role: LabelValue) -> Sample: ...
        def selector(self, *, target: LabelValue = ..., role: LabelValue = ...) -> str: ...


PROBE_DNS_SECONDS = _ProbeDnsSeconds("dynamo_sidecar_probe_dns_seconds")


class _ProbeConnectSeconds(Handle):
    """gauge, seconds: TCP connect time of the last probe."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, target: LabelValue, role: LabelValue) -> Sample: ...
        def selector(self, *, target: LabelValue = ..., role: LabelValue = ...) -> str: ...


PROBE_CONNECT_SECONDS = _ProbeConnectSeconds("dynamo_sidecar_probe_connect_seconds")


class _ProbeHttpStatusCode(Handle):
    """gauge: HTTP status of the last HTTP probe."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, target: LabelValue, role: LabelValue) -> Sample: ...
        def selector(self, *, target: LabelValue = ..., role: LabelValue = ...) -> str: ...


PROBE_HTTP_STATUS_CODE = _ProbeHttpStatusCode("dynamo_sidecar_probe_http_status_code")


class _ProbesTotal(Handle):
    """counter: Dependency probes by outcome."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, target: LabelValue, role: LabelValue, outcome: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, target: LabelValue = ..., role: LabelValue = ..., outcome: LabelValue = ...
        ) -> str: ...


PROBES_TOTAL = _ProbesTotal("dynamo_sidecar_probes_total")


class _GpuAvailable(Handle):
    """gauge: 1 if NVML answered and found GPUs; else 0 with the reason (library_not_found, driver_not_loaded, no_devices...)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, reason: LabelValue) -> Sample: ...
        def selector(self, *, reason: LabelValue = ...) -> str: ...


GPU_AVAILABLE = _GpuAvailable("dynamo_sidecar_gpu_available")


class _GpuInfo(Handle):
    """gauge: Always 1 per GPU: its name and PCI bus id."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self,
            value: float,
            /,
            *,
            gpu: LabelValue,
            uuid: LabelValue,
            name: LabelValue,
            pci_bus_id: LabelValue,
        ) -> Sample: ...
        def selector(
            self,
            *,
            gpu: LabelValue = ...,
            uuid: LabelValue = ...,
            name: LabelValue = ...,
            pci_bus_id: LabelValue = ...,
        ) -> str: ...


GPU_INFO = _GpuInfo("dynamo_sidecar_gpu_info")


class _GpuLost(Handle):
    """gauge: 1 while NVML reports the GPU lost (NVML_ERROR_GPU_IS_LOST)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, uuid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., uuid: LabelValue = ...) -> str: ...


GPU_LOST = _GpuLost("dynamo_sidecar_gpu_lost")


class _GpuUtilizationRatio(Handle):
    """gauge, ratio: GPU and memory-controller utilisation, 0-1."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, kind: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., kind: LabelValue = ...
        ) -> str: ...


GPU_UTILIZATION_RATIO = _GpuUtilizationRatio("dynamo_sidecar_gpu_utilization_ratio")


class _GpuMemoryBytes(Handle):
    """gauge, bytes: Frame-buffer memory used, free and total."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, state: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., state: LabelValue = ...
        ) -> str: ...


GPU_MEMORY_BYTES = _GpuMemoryBytes("dynamo_sidecar_gpu_memory_bytes")


class _GpuTemperatureCelsius(Handle):
    """gauge, celsius: GPU die temperature."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, uuid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., uuid: LabelValue = ...) -> str: ...


GPU_TEMPERATURE_CELSIUS = _GpuTemperatureCelsius("dynamo_sidecar_gpu_temperature_celsius")


class _GpuTemperatureThresholdCelsius(Handle):
    """gauge, celsius: Slowdown and shutdown temperature thresholds."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, threshold: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., threshold: LabelValue = ...
        ) -> str: ...


GPU_TEMPERATURE_THRESHOLD_CELSIUS = _GpuTemperatureThresholdCelsius(
    "dynamo_sidecar_gpu_temperature_threshold_celsius"
)


class _GpuPowerWatts(Handle):
    """gauge, watts: Power draw."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, uuid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., uuid: LabelValue = ...) -> str: ...


GPU_POWER_WATTS = _GpuPowerWatts("dynamo_sidecar_gpu_power_watts")


class _GpuPowerLimitWatts(Handle):
    """gauge, watts: Enforced power limit."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, uuid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., uuid: LabelValue = ...) -> str: ...


GPU_POWER_LIMIT_WATTS = _GpuPowerLimitWatts("dynamo_sidecar_gpu_power_limit_watts")


class _GpuClockHertz(Handle):
    """gauge, hertz: Current SM and memory clocks."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, clock: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., clock: LabelValue = ...
        ) -> str: ...


GPU_CLOCK_HERTZ = _GpuClockHertz("dynamo_sidecar_gpu_clock_hertz")


class _GpuClockEventReason(Handle):
    """gauge: 1 while a clock event (throttle) reason is active: sw_power_cap, hw_slowdown, sw/hw_thermal_slowdown, hw_power_brake_slowdown, sync_boost, gpu_idle..."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, reason: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., reason: LabelValue = ...
        ) -> str: ...


GPU_CLOCK_EVENT_REASON = _GpuClockEventReason("dynamo_sidecar_gpu_clock_event_reason")


class _GpuEccErrorsTotal(Handle):
    """counter: ECC errors by type (corrected, uncorrected) and counter (volatile, aggregate)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, type: LabelValue, counter: LabelValue
        ) -> Sample: ...
        def selector(
            self,
            *,
            gpu: LabelValue = ...,
            uuid: LabelValue = ...,
            type: LabelValue = ...,
            counter: LabelValue = ...,
        ) -> str: ...


GPU_ECC_ERRORS_TOTAL = _GpuEccErrorsTotal("dynamo_sidecar_gpu_ecc_errors_total")


class _GpuRetiredPages(Handle):
    """gauge: Retired memory pages by cause (single_bit, double_bit)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, cause: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., cause: LabelValue = ...
        ) -> str: ...


GPU_RETIRED_PAGES = _GpuRetiredPages("dynamo_sidecar_gpu_retired_pages")


class _GpuRemappedRows(Handle):
    """gauge: Remapped memory rows: correctable, uncorrectable, pending, failure."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, kind: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., kind: LabelValue = ...
        ) -> str: ...


GPU_REMAPPED_ROWS = _GpuRemappedRows("dynamo_sidecar_gpu_remapped_rows")


class _GpuPcieReplaysTotal(Handle):
    """counter: PCIe replay counter."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, uuid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., uuid: LabelValue = ...) -> str: ...


GPU_PCIE_REPLAYS_TOTAL = _GpuPcieReplaysTotal("dynamo_sidecar_gpu_pcie_replays_total")


class _GpuPcieThroughputBytesPerSecond(Handle):
    """gauge, bytes_per_second: PCIe throughput (tx, rx)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, direction: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., uuid: LabelValue = ..., direction: LabelValue = ...
        ) -> str: ...


GPU_PCIE_THROUGHPUT_BYTES_PER_SECOND = _GpuPcieThroughputBytesPerSecond(
    "dynamo_sidecar_gpu_pcie_throughput_bytes_per_second"
)


class _GpuNvlinkErrorsTotal(Handle):
    """counter: NVLink errors per link and counter (replay, recovery, crc_flit)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, link: LabelValue, counter: LabelValue
        ) -> Sample: ...
        def selector(
            self,
            *,
            gpu: LabelValue = ...,
            uuid: LabelValue = ...,
            link: LabelValue = ...,
            counter: LabelValue = ...,
        ) -> str: ...


GPU_NVLINK_ERRORS_TOTAL = _GpuNvlinkErrorsTotal("dynamo_sidecar_gpu_nvlink_errors_total")


class _GpuFanSpeedRatio(Handle):
    """gauge, ratio: Fan speed 0-1 (boards with fans only)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, uuid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., uuid: LabelValue = ...) -> str: ...


GPU_FAN_SPEED_RATIO = _GpuFanSpeedRatio("dynamo_sidecar_gpu_fan_speed_ratio")


class _GpuPersistenceMode(Handle):
    """gauge: 1 if persistence mode is on."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, uuid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., uuid: LabelValue = ...) -> str: ...


GPU_PERSISTENCE_MODE = _GpuPersistenceMode("dynamo_sidecar_gpu_persistence_mode")


class _GpuProcessMemoryBytes(Handle):
    """gauge, bytes: GPU memory of the Dynamo processes (process="other": everything else)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, uuid: LabelValue, pid: LabelValue, process: LabelValue
        ) -> Sample: ...
        def selector(
            self,
            *,
            gpu: LabelValue = ...,
            uuid: LabelValue = ...,
            pid: LabelValue = ...,
            process: LabelValue = ...,
        ) -> str: ...


GPU_PROCESS_MEMORY_BYTES = _GpuProcessMemoryBytes("dynamo_sidecar_gpu_process_memory_bytes")


class _GpuXidErrorsTotal(Handle):
    """counter: XID errors seen through the NVML event set."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, gpu: LabelValue, xid: LabelValue) -> Sample: ...
        def selector(self, *, gpu: LabelValue = ..., xid: LabelValue = ...) -> str: ...


GPU_XID_ERRORS_TOTAL = _GpuXidErrorsTotal("dynamo_sidecar_gpu_xid_errors_total")


class _GpuNvmlErrorsTotal(Handle):
    """counter: NVML calls that failed, by function and error (not_supported is not counted)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, gpu: LabelValue, function: LabelValue, error: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, gpu: LabelValue = ..., function: LabelValue = ..., error: LabelValue = ...
        ) -> str: ...


GPU_NVML_ERRORS_TOTAL = _GpuNvmlErrorsTotal("dynamo_sidecar_gpu_nvml_errors_total")


class _CanaryRequestsTotal(Handle):
    """counter: Canary requests by model and outcome (ok, timeout, http_error, bad_response, connect_error)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, model: LabelValue, outcome: LabelValue) -> Sample: ...
        def selector(self, *, model: LabelValue = ..., outcome: LabelValue = ...) -> str: ...


CANARY_REQUESTS_TOTAL = _CanaryRequestsTotal("dynamo_sidecar_canary_requests_total")


class _CanaryLatencySeconds(Handle):
    """histogram, seconds: Canary request latency, to the last byte."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, model: LabelValue) -> Sample: ...
        def selector(self, *, model: LabelValue = ...) -> str: ...
        def bucket(self, value: float, /, *, le: LabelValue, model: LabelValue) -> Sample: ...
        def sum(self, value: float, /, *, model: LabelValue) -> Sample: ...
        def count(self, value: float, /, *, model: LabelValue) -> Sample: ...


CANARY_LATENCY_SECONDS = _CanaryLatencySeconds("dynamo_sidecar_canary_latency_seconds")


class _CanaryTtftSeconds(Handle):
    """gauge, seconds: Time to first token of the last streaming canary."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, model: LabelValue) -> Sample: ...
        def selector(self, *, model: LabelValue = ...) -> str: ...


CANARY_TTFT_SECONDS = _CanaryTtftSeconds("dynamo_sidecar_canary_ttft_seconds")


class _CanaryLastSuccessTimestampSeconds(Handle):
    """gauge, seconds: Unix time of the model's last successful canary."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, model: LabelValue) -> Sample: ...
        def selector(self, *, model: LabelValue = ...) -> str: ...


CANARY_LAST_SUCCESS_TIMESTAMP_SECONDS = _CanaryLastSuccessTimestampSeconds(
    "dynamo_sidecar_canary_last_success_timestamp_seconds"
)


class _CanaryConsecutiveFailures(Handle):
    """gauge: Canary failures in a row for the model."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, model: LabelValue) -> Sample: ...
        def selector(self, *, model: LabelValue = ...) -> str: ...


CANARY_CONSECUTIVE_FAILURES = _CanaryConsecutiveFailures("dynamo_sidecar_canary_consecutive_failures")


class _CanaryFailing(Handle):
    """gauge: 1 once the model failed canary_failures canaries in a row."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, model: LabelValue) -> Sample: ...
        def selector(self, *, model: LabelValue = ...) -> str: ...


CANARY_FAILING = _CanaryFailing("dynamo_sidecar_canary_failing")


class _OtlpEnabled(Handle):
    """gauge: 1 when OTLP trace export is configured; protocol grpc or http/protobuf."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, protocol: LabelValue) -> Sample: ...
        def selector(self, *, protocol: LabelValue = ...) -> str: ...


OTLP_ENABLED = _OtlpEnabled("dynamo_sidecar_otlp_enabled")


class _OtlpSpansExportedTotal(Handle):
    """counter: Spans the OTLP receiver accepted."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


OTLP_SPANS_EXPORTED_TOTAL = _OtlpSpansExportedTotal("dynamo_sidecar_otlp_spans_exported_total")


class _OtlpSpansDroppedTotal(Handle):
    """counter: Spans dropped: queue_full (receiver too slow) or export_failed."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, reason: LabelValue) -> Sample: ...
        def selector(self, *, reason: LabelValue = ...) -> str: ...


OTLP_SPANS_DROPPED_TOTAL = _OtlpSpansDroppedTotal("dynamo_sidecar_otlp_spans_dropped_total")


class _OtlpExportFailuresTotal(Handle):
    """counter: Export batches that failed."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


OTLP_EXPORT_FAILURES_TOTAL = _OtlpExportFailuresTotal("dynamo_sidecar_otlp_export_failures_total")


class _OtlpQueueSpans(Handle):
    """gauge: Spans waiting in the bounded export queue."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


OTLP_QUEUE_SPANS = _OtlpQueueSpans("dynamo_sidecar_otlp_queue_spans")


class _LogLinesTotal(Handle):
    """counter: Dynamo JSONL log lines read, by level and target."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, level: LabelValue, target: LabelValue) -> Sample: ...
        def selector(self, *, level: LabelValue = ..., target: LabelValue = ...) -> str: ...


LOG_LINES_TOTAL = _LogLinesTotal("dynamo_sidecar_log_lines_total")


class _LogLinesSkippedTotal(Handle):
    """counter: Log lines that were not Dynamo JSONL (skipped)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_LINES_SKIPPED_TOTAL = _LogLinesSkippedTotal("dynamo_sidecar_log_lines_skipped_total")


class _LogLineErrorsTotal(Handle):
    """counter: Log lines whose handling failed (skipped; the rest of the batch kept)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_LINE_ERRORS_TOTAL = _LogLineErrorsTotal("dynamo_sidecar_log_line_errors_total")


class _LogCountersShedTotal(Handle):
    """counter: (level, target) line counters dropped, least recently seen first, to keep 200."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_COUNTERS_SHED_TOTAL = _LogCountersShedTotal("dynamo_sidecar_log_counters_shed_total")


class _LogRequestIndexBytes(Handle):
    """gauge, bytes: Approximate bytes of log lines kept for /diagnose/request (capped at 8 MiB)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_REQUEST_INDEX_BYTES = _LogRequestIndexBytes("dynamo_sidecar_log_request_index_bytes")


class _LogLinesTruncatedTotal(Handle):
    """counter: Log lines longer than 64 KiB (dropped)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_LINES_TRUNCATED_TOTAL = _LogLinesTruncatedTotal("dynamo_sidecar_log_lines_truncated_total")


class _LogRotationsTotal(Handle):
    """counter: Log file rotations and truncations followed."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_ROTATIONS_TOTAL = _LogRotationsTotal("dynamo_sidecar_log_rotations_total")


class _LogBytesReadTotal(Handle):
    """counter: Bytes of log read."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_BYTES_READ_TOTAL = _LogBytesReadTotal("dynamo_sidecar_log_bytes_read_total")


class _LogFiles(Handle):
    """gauge: Log files currently tailed."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


LOG_FILES = _LogFiles("dynamo_sidecar_log_files")


class _DynamoRequestRate(Handle):
    """gauge: Frontend requests per second over the window."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, window: LabelValue) -> Sample: ...
        def selector(self, *, window: LabelValue = ...) -> str: ...


DYNAMO_REQUEST_RATE = _DynamoRequestRate("dynamo_sidecar_dynamo_request_rate")


class _DynamoErrorRate(Handle):
    """gauge: Frontend failed requests per second over the window."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, window: LabelValue) -> Sample: ...
        def selector(self, *, window: LabelValue = ...) -> str: ...


DYNAMO_ERROR_RATE = _DynamoErrorRate("dynamo_sidecar_dynamo_error_rate")


class _DynamoInflightRequests(Handle):
    """gauge: In-flight requests now (frontend, worker)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, source: LabelValue) -> Sample: ...
        def selector(self, *, source: LabelValue = ...) -> str: ...


DYNAMO_INFLIGHT_REQUESTS = _DynamoInflightRequests("dynamo_sidecar_dynamo_inflight_requests")


class _DynamoQueuedRequests(Handle):
    """gauge: Requests queued at the frontend now."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DYNAMO_QUEUED_REQUESTS = _DynamoQueuedRequests("dynamo_sidecar_dynamo_queued_requests")


class _DynamoStalledSeconds(Handle):
    """gauge, seconds: Seconds Dynamo has held requests in flight without producing any output (0 while it progresses or holds nothing), as engine_hung judges it."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /) -> Sample: ...
        def selector(self) -> str: ...


DYNAMO_STALLED_SECONDS = _DynamoStalledSeconds("dynamo_sidecar_dynamo_stalled_seconds")


class _DynamoLatencySeconds(Handle):
    """gauge, seconds: Latency percentile (p50, p90, p99) over the window from Dynamo's histograms, as PromQL histogram_quantile computes it."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(
            self, value: float, /, *, signal: LabelValue, percentile: LabelValue, window: LabelValue
        ) -> Sample: ...
        def selector(
            self, *, signal: LabelValue = ..., percentile: LabelValue = ..., window: LabelValue = ...
        ) -> str: ...


DYNAMO_LATENCY_SECONDS = _DynamoLatencySeconds("dynamo_sidecar_dynamo_latency_seconds")


class _DynamoRejectionRate(Handle):
    """gauge: Rejected requests per second over the window."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, window: LabelValue) -> Sample: ...
        def selector(self, *, window: LabelValue = ...) -> str: ...


DYNAMO_REJECTION_RATE = _DynamoRejectionRate("dynamo_sidecar_dynamo_rejection_rate")


class _DynamoMigrationRate(Handle):
    """gauge: Migrated requests per second over the window."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, window: LabelValue) -> Sample: ...
        def selector(self, *, window: LabelValue = ...) -> str: ...


DYNAMO_MIGRATION_RATE = _DynamoMigrationRate("dynamo_sidecar_dynamo_migration_rate")


class _DynamoBytesRate(Handle):
    """gauge: Worker request/response bytes per second over the window."""

    __slots__ = ()

    if TYPE_CHECKING:

        def sample(self, value: float, /, *, direction: LabelValue, window: LabelValue) -> Sample: ...
        def selector(self, *, direction: LabelValue = ..., window: LabelValue = ...) -> str: ...


DYNAMO_BYTES_RATE = _DynamoBytesRate("dynamo_sidecar_dynamo_bytes_rate")
