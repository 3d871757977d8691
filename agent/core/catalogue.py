"""The one place that declares every metric the sidecar itself emits.

The Prometheus exporter takes type and help from here, README's metrics table is generated
from here (`python -m agent.core.catalogue`), and a test checks that `/metrics` emits nothing
under the `dynamo_sidecar_` prefix that is not declared here. Code never names a metric by
string: `python -m agent.tools.docs` generates one typed handle per entry into
agent/core/metrics.py, and every emission, state read and evidence selector goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "dynamo_sidecar_"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str  # as exposed in the Prometheus text format (counters end in _total)
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...]
    source: str  # the collector or component that emits it
    # The unit, from the name's suffix (Prometheus naming: the base unit before `_total`);
    # "" for a count or a state without one.
    unit: str = ""
    # The allowed values of the labels whose set is closed (documented, and checked in strict
    # mode); labels not listed take any value.
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def allowed(self, label: str) -> tuple[str, ...] | None:
        """The closed set of values of `label`, or None when it takes any."""
        for name, values in self.values:
            if name == label:
                return values
        return None

    @property
    def family(self) -> str:
        """Family name as prometheus_client models it (counters without `_total`)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


# Longest first: `_bytes_per_second` before `_bytes`... The unit is the suffix before `_total`.
_UNITS = (
    ("_bytes_per_second", "bytes_per_second"),
    ("_timestamp_seconds", "seconds"),
    ("_seconds", "seconds"),
    ("_bytes", "bytes"),
    ("_ratio", "ratio"),
    ("_celsius", "celsius"),
    ("_watts", "watts"),
    ("_hertz", "hertz"),
    ("_cores", "cores"),
)


def unit_of(name: str) -> str:
    """The unit a metric's name declares by its suffix (`_total` aside), or ""."""
    base = name[: -len("_total")] if name.endswith("_total") else name
    for suffix, unit in _UNITS:
        if base.endswith(suffix):
            return unit
    return ""


def _m(
    name: str,
    type_: str,
    help_: str,
    labels: tuple[str, ...],
    source: str,
    **values: tuple[str, ...],
) -> MetricSpec:
    unknown = set(values) - set(labels)
    if unknown:
        raise ValueError(f"{name}: allowed values for undeclared labels {sorted(unknown)}")
    full = PREFIX + name
    return MetricSpec(full, type_, help_, labels, source, unit_of(full), tuple(values.items()))


# fmt: off
CATALOGUE: tuple[MetricSpec, ...] = (
    # --- the sidecar itself -----------------------------------------------------------
    _m("build_info", "gauge", "Always 1; the sidecar's version and Python.", ("version", "python"), "agent"),
    _m("start_time_seconds", "gauge", "Unix time the sidecar started.", (), "agent"),
    _m("ready", "gauge", "1 once every collector has completed one cycle.", (), "agent"),
    _m("http_connections", "gauge", "Open connections to the sidecar's HTTP server.", (), "agent"),
    _m("http_connections_refused_total", "counter", "Connections closed at once: max_connections (or the peer's three quarters of them) were open and none was idle.", (), "agent"),
    _m("http_connections_shed_total", "counter", "Idle connections closed to make room for a new one (the oldest of the peer holding the most).", (), "agent"),
    _m("undeclared_emissions_total", "counter", "Emissions of a metric the catalogue does not declare, or with labels it does not declare (a bug: logged once per metric, the sample kept).", ("metric",), "agent"),
    _m("draining", "gauge", "1 while a drain is in progress.", (), "agent"),
    _m("quiet", "gauge", "1 while the pod is quiet and the collectors other than health and logs run quiet_slowdown times slower.", (), "agent"),
    _m("evaluations_skipped_total", "counter", "Collection cycles of a quiet pod whose findings evaluation was skipped: nothing the rules read had changed since the last one, less than the quiet pace before.", (), "agent"),
    _m("renders_skipped_total", "counter", "Collection cycles whose exposition was not rendered: no scraper had asked for /metrics recently (the next scrape renders), or the pod is quiet (rendered at the quiet pace).", (), "agent"),
    _m("collector_success", "gauge", "1 if the collector's last run succeeded.", ("collector",), "scheduler"),
    _m("collector_duration_seconds", "gauge", "Duration of the collector's last run.", ("collector",), "scheduler"),
    _m("collector_last_success_timestamp_seconds", "gauge", "Unix time of the collector's last successful run.", ("collector",), "scheduler"),
    _m("collector_runs_total", "counter", "Collector runs by outcome (ok, error, timeout).", ("collector", "outcome"), "scheduler", outcome=("ok", "error", "timeout")),
    _m("series_dropped_total", "counter", "Series not stored because a cardinality cap was reached, by metric (past 100 names: metric=\"_other\").", ("metric",), "state"),
    _m("series_caps_hit_total", "counter", "Series dropped by which cap: series_per_metric, metric_names, series, memory_budget.", ("cap",), "state"),
    _m("history_series", "gauge", "Series currently held in the history ring.", (), "state"),
    _m("history_window_seconds", "gauge", "How far back the history ring reaches by configuration.", (), "state"),
    _m("history_bytes", "gauge", "Memory the history rings hold (their fixed parts counted at their largest).", (), "state"),
    _m("history_refused_total", "counter", "Series admitted without history because the memory budget could not hold their ring full.", (), "state"),
    _m("memory_budget_bytes", "gauge", "The state's memory budget (memory_budget; auto: a quarter of the container's limit).", (), "state"),
    _m("memory_budget_used_bytes", "gauge", "The state's memory as the budget counts it: series, and kept rings at their full reserve.", (), "state"),
    _m("events_total", "counter", "Events recorded (health transitions, restarts, XIDs...) by kind.", ("kind",), "state"),
    _m("rule_evaluation_failures_total", "counter", "Evaluations of the diagnose rule that raised (its findings missing from that report; the error is in its rule_errors).", ("rule",), "diagnose"),
    _m("rule_evaluation_duration_seconds", "gauge", "How long the diagnose rule's last evaluation took.", ("rule",), "diagnose"),
    _m("exposition_render_seconds", "gauge", "Time the last /metrics render took on the event loop, its steps summed.", (), "exporter"),
    _m("exposition_render_longest_step_seconds", "gauge", "Longest step of the last render: what a scrape arriving mid-render waits at most.", (), "exporter"),
    _m("drain_duration_seconds", "gauge", "Duration of the current or last drain.", (), "drain"),
    _m("drain_inflight_at_start", "gauge", "Dynamo in-flight requests when the drain began.", (), "drain"),
    _m("drain_inflight_at_end", "gauge", "Dynamo in-flight requests when the drain ended (or now).", (), "drain"),
    _m("drain_requests_completed", "gauge", "Frontend requests that completed during the drain.", (), "drain"),
    _m("drain_requests_failed", "gauge", "Frontend requests that failed during the drain.", (), "drain"),
    _m("slo_target", "gauge", "Configured SLO target by objective (ttft_p99 and itl_p99 in seconds, error_rate as a ratio).", ("objective",), "diagnose", objective=("ttft_p99", "itl_p99", "error_rate")),
    _m("slo_observed", "gauge", "The objective's value over the signal window, as the slo_breach rule judges it.", ("objective",), "diagnose", objective=("ttft_p99", "itl_p99", "error_rate")),
    _m("slo_observations", "gauge", "Observations (requests) inside the signal window behind slo_observed, by objective.", ("objective",), "diagnose", objective=("ttft_p99", "itl_p99", "error_rate")),
    _m("drain_reason", "gauge", "1 for why the drain ended: inflight_zero, process_exited, deadline, second_signal, nothing_to_drain.", ("reason",), "drain", reason=("inflight_zero", "process_exited", "deadline", "second_signal", "nothing_to_drain")),
    # --- process collector ------------------------------------------------------------
    _m("processes_matched", "gauge", "Dynamo processes found in the pod's process namespace.", (), "process"),
    _m("process_cpu_seconds_total", "counter", "CPU time consumed by the Dynamo process.", ("process", "pid", "mode"), "process"),
    _m("process_resident_memory_bytes", "gauge", "Resident set size.", ("process", "pid"), "process"),
    _m("process_virtual_memory_bytes", "gauge", "Virtual memory size.", ("process", "pid"), "process"),
    _m("process_threads", "gauge", "Number of OS threads.", ("process", "pid"), "process"),
    _m("process_open_fds", "gauge", "Open file descriptors.", ("process", "pid"), "process"),
    _m("process_max_fds", "gauge", "Soft limit on open file descriptors (RLIMIT_NOFILE).", ("process", "pid"), "process"),
    _m("process_context_switches_total", "counter", "Context switches by kind (voluntary, involuntary).", ("process", "pid", "kind"), "process"),
    _m("process_children", "gauge", "Number of child processes (recursive).", ("process", "pid"), "process"),
    _m("process_start_time_seconds", "gauge", "Unix time the process started.", ("process", "pid"), "process"),
    _m("process_uptime_seconds", "gauge", "Seconds since the process started.", ("process", "pid"), "process"),
    _m("process_state", "gauge", "1 for the process's scheduler state (R, S, D uninterruptible, T stopped, t traced, Z, X, I).", ("process", "pid", "state"), "process"),
    # --- cgroup / pressure collector ----------------------------------------------------
    _m("cgroup_info", "gauge", "Always 1; which cgroup is watched and its version.", ("version", "path", "scope"), "cgroup"),
    _m("cgroup_memory_usage_bytes", "gauge", "Memory charged to the cgroup.", (), "cgroup"),
    _m("cgroup_memory_limit_bytes", "gauge", "Memory limit of the cgroup (absent when unlimited).", (), "cgroup"),
    _m("cgroup_memory_events_total", "counter", "cgroup memory events (oom, oom_kill, max, high).", ("event",), "cgroup"),
    _m("cgroup_cpu_usage_seconds_total", "counter", "CPU time consumed by the cgroup.", (), "cgroup"),
    _m("cgroup_cpu_limit_cores", "gauge", "CPU quota in cores (absent when unlimited).", (), "cgroup"),
    _m("cgroup_cpu_periods_total", "counter", "CFS enforcement periods elapsed.", (), "cgroup"),
    _m("cgroup_cpu_throttled_periods_total", "counter", "CFS periods in which the cgroup was throttled.", (), "cgroup"),
    _m("cgroup_cpu_throttled_seconds_total", "counter", "Time the cgroup spent throttled.", (), "cgroup"),
    _m("pressure_stall_ratio", "gauge", "PSI stall share over the window (avg10/avg60/avg300 as 0-1).", ("scope", "resource", "kind", "window"), "cgroup"),
    _m("pressure_stalled_seconds_total", "counter", "PSI total stall time.", ("scope", "resource", "kind"), "cgroup"),
    # --- Dynamo health collector ------------------------------------------------------
    _m("endpoint_up", "gauge", "1 if the Dynamo endpoint answered 2xx with a healthy status.", ("endpoint", "probe"), "dynamo_health"),
    _m("endpoint_http_status_code", "gauge", "HTTP status of the last probe (0 when no response).", ("endpoint", "probe"), "dynamo_health"),
    _m("endpoint_response_seconds", "gauge", "Response time of the last probe.", ("endpoint", "probe"), "dynamo_health"),
    _m("endpoint_probe_outcome", "gauge", "1 for the last probe's outcome (ok, unhealthy, refused, timeout, http_error, malformed, error).", ("endpoint", "probe", "outcome"), "dynamo_health"),
    _m("endpoint_status", "gauge", "1 for the status string in the last health body (healthy, ready, notready, ...).", ("endpoint", "probe", "status"), "dynamo_health"),
    _m("endpoint_probes_total", "counter", "Health probes by outcome.", ("endpoint", "probe", "outcome"), "dynamo_health"),
    _m("endpoint_transitions_total", "counter", "Changes of the probe's status since the sidecar started.", ("endpoint", "probe"), "dynamo_health"),
    _m("frontend_instances", "gauge", "Distinct worker instance ids the frontend's /health lists.", ("endpoint",), "dynamo_health"),
    _m("frontend_models", "gauge", "Models the frontend's /v1/models lists.", ("endpoint",), "dynamo_health"),
    _m("frontend_registered_endpoints", "gauge", "dyn:// endpoints the frontend's /health lists.", ("endpoint",), "dynamo_health"),
    _m("worker_endpoint_ready", "gauge", "1 if the worker's /health marks this Dynamo endpoint ready.", ("endpoint", "dynamo_endpoint"), "dynamo_health"),
    _m("worker_uptime_seconds", "gauge", "Worker runtime uptime from its /health body.", ("endpoint",), "dynamo_health"),
    _m("worker_restarts_total", "counter", "Worker restarts seen as uptime going backwards.", ("endpoint",), "dynamo_health"),
    # --- Dynamo metrics collector -----------------------------------------------------
    _m("scrape_up", "gauge", "1 if the last scrape of the Dynamo /metrics endpoint parsed.", ("endpoint",), "dynamo_metrics"),
    _m("scrape_duration_seconds", "gauge", "Duration of the last scrape of Dynamo /metrics.", ("endpoint",), "dynamo_metrics"),
    _m("scrape_bytes", "gauge", "Size of the last Dynamo /metrics body.", ("endpoint",), "dynamo_metrics"),
    _m("scrape_series", "gauge", "Series in the last Dynamo /metrics body.", ("endpoint",), "dynamo_metrics"),
    _m("scrape_errors_total", "counter", "Failed scrapes of Dynamo /metrics by reason.", ("endpoint", "reason"), "dynamo_metrics"),
    _m("passthrough_conflicts_total", "counter", "Dynamo series seen from two sources with the same labels; the first kept.", ("metric",), "exporter"),
    # --- TCP collector --------------------------------------------------------------------
    _m("tcp_sockets", "gauge", "TCP sockets by state, peer role (etcd, nats, frontend, worker_system, configured roles, other) and direction (in, out, listen).", ("state", "peer", "direction"), "tcp"),
    _m("tcp_queue_bytes", "gauge", "Bytes in socket send/receive queues, summed per peer role.", ("peer", "queue"), "tcp", queue=("send", "recv")),
    _m("tcp_rtt_seconds", "gauge", "Mean smoothed RTT of established sockets per peer role (tcp_info).", ("peer",), "tcp"),
    _m("tcp_socket_retransmits", "gauge", "Retransmitted segments of the current sockets per peer role (tcp_info).", ("peer",), "tcp"),
    _m("tcp_socket_lost", "gauge", "Segments currently considered lost per peer role (tcp_info).", ("peer",), "tcp"),
    _m("tcp_listening", "gauge", "1 if the Dynamo port expected in this pod is listening.", ("port", "role"), "tcp"),
    _m("tcp_kernel_total", "counter", "Kernel TCP counters of the pod's namespace (/proc/net/snmp, /proc/net/netstat).", ("counter",), "tcp"),
    _m("tcp_collection_method", "gauge", "1 for how sockets were read: netlink (sock_diag) or procfs.", ("method",), "tcp", method=("netlink", "procfs")),
    _m("tcp_retransmit_ratio", "gauge", "Retransmitted / sent segments over the window (kernel counters).", ("window",), "signals"),
    _m("probe_up", "gauge", "1 if the dependency's last probe succeeded.", ("target", "role"), "tcp"),
    _m("probe_outcome", "gauge", "1 for the last probe outcome: ok, refused, timeout, dns_error, dns_timeout, unreachable, http_error, unhealthy (etcd /health says false), error.", ("target", "role", "outcome"), "tcp"),
    _m("probe_dns_seconds", "gauge", "Name resolution time of the last probe.", ("target", "role"), "tcp"),
    _m("probe_connect_seconds", "gauge", "TCP connect time of the last probe.", ("target", "role"), "tcp"),
    _m("probe_http_status_code", "gauge", "HTTP status of the last HTTP probe.", ("target", "role"), "tcp"),
    _m("probes_total", "counter", "Dependency probes by outcome.", ("target", "role", "outcome"), "tcp"),
    # --- GPU collector (NVML) --------------------------------------------------------------
    _m("gpu_available", "gauge", "1 if NVML answered and found GPUs; else 0 with the reason (library_not_found, driver_not_loaded, no_devices...).", ("reason",), "gpu"),
    _m("gpu_info", "gauge", "Always 1 per GPU: its name and PCI bus id.", ("gpu", "uuid", "name", "pci_bus_id"), "gpu"),
    _m("gpu_lost", "gauge", "1 while NVML reports the GPU lost (NVML_ERROR_GPU_IS_LOST).", ("gpu", "uuid"), "gpu"),
    _m("gpu_utilization_ratio", "gauge", "GPU and memory-controller utilisation, 0-1.", ("gpu", "uuid", "kind"), "gpu"),
    _m("gpu_memory_bytes", "gauge", "Frame-buffer memory used, free and total.", ("gpu", "uuid", "state"), "gpu", state=("used", "free", "total")),
    _m("gpu_temperature_celsius", "gauge", "GPU die temperature.", ("gpu", "uuid"), "gpu"),
    _m("gpu_temperature_threshold_celsius", "gauge", "Slowdown and shutdown temperature thresholds.", ("gpu", "uuid", "threshold"), "gpu"),
    _m("gpu_power_watts", "gauge", "Power draw.", ("gpu", "uuid"), "gpu"),
    _m("gpu_power_limit_watts", "gauge", "Enforced power limit.", ("gpu", "uuid"), "gpu"),
    _m("gpu_clock_hertz", "gauge", "Current SM and memory clocks.", ("gpu", "uuid", "clock"), "gpu"),
    _m("gpu_clock_event_reason", "gauge", "1 while a clock event (throttle) reason is active: sw_power_cap, hw_slowdown, sw/hw_thermal_slowdown, hw_power_brake_slowdown, sync_boost, gpu_idle...", ("gpu", "uuid", "reason"), "gpu"),
    _m("gpu_ecc_errors_total", "counter", "ECC errors by type (corrected, uncorrected) and counter (volatile, aggregate).", ("gpu", "uuid", "type", "counter"), "gpu"),
    _m("gpu_retired_pages", "gauge", "Retired memory pages by cause (single_bit, double_bit).", ("gpu", "uuid", "cause"), "gpu"),
    _m("gpu_remapped_rows", "gauge", "Remapped memory rows: correctable, uncorrectable, pending, failure.", ("gpu", "uuid", "kind"), "gpu"),
    _m("gpu_pcie_replays_total", "counter", "PCIe replay counter.", ("gpu", "uuid"), "gpu"),
    _m("gpu_pcie_throughput_bytes_per_second", "gauge", "PCIe throughput (tx, rx).", ("gpu", "uuid", "direction"), "gpu"),
    _m("gpu_nvlink_errors_total", "counter", "NVLink errors per link and counter (replay, recovery, crc_flit).", ("gpu", "uuid", "link", "counter"), "gpu"),
    _m("gpu_fan_speed_ratio", "gauge", "Fan speed 0-1 (boards with fans only).", ("gpu", "uuid"), "gpu"),
    _m("gpu_persistence_mode", "gauge", "1 if persistence mode is on.", ("gpu", "uuid"), "gpu"),
    _m("gpu_process_memory_bytes", "gauge", "GPU memory of the Dynamo processes (process=\"other\": everything else).", ("gpu", "uuid", "pid", "process"), "gpu"),
    _m("gpu_xid_errors_total", "counter", "XID errors seen through the NVML event set.", ("gpu", "xid"), "gpu"),
    _m("gpu_nvml_errors_total", "counter", "NVML calls that failed, by function and error (not_supported is not counted).", ("gpu", "function", "error"), "gpu"),
    # --- canary -----------------------------------------------------------------------------
    _m("canary_requests_total", "counter", "Canary requests by model and outcome (ok, timeout, http_error, bad_response, connect_error).", ("model", "outcome"), "canary"),
    _m("canary_latency_seconds", "histogram", "Canary request latency, to the last byte.", ("model",), "canary"),
    _m("canary_ttft_seconds", "gauge", "Time to first token of the last streaming canary.", ("model",), "canary"),
    _m("canary_last_success_timestamp_seconds", "gauge", "Unix time of the model's last successful canary.", ("model",), "canary"),
    _m("canary_consecutive_failures", "gauge", "Canary failures in a row for the model.", ("model",), "canary"),
    _m("canary_failing", "gauge", "1 once the model failed canary_failures canaries in a row.", ("model",), "canary"),
    # --- OTLP traces ---------------------------------------------------------------------
    _m("otlp_enabled", "gauge", "1 when OTLP trace export is configured; protocol grpc or http/protobuf.", ("protocol",), "otlp"),
    _m("otlp_spans_exported_total", "counter", "Spans the OTLP receiver accepted.", (), "otlp"),
    _m("otlp_spans_dropped_total", "counter", "Spans dropped: queue_full (receiver too slow) or export_failed.", ("reason",), "otlp"),
    _m("otlp_export_failures_total", "counter", "Export batches that failed.", (), "otlp"),
    _m("otlp_queue_spans", "gauge", "Spans waiting in the bounded export queue.", (), "otlp"),
    # --- Dynamo log collector -----------------------------------------------------------
    _m("log_lines_total", "counter", "Dynamo JSONL log lines read, by level and target.", ("level", "target"), "dynamo_logs"),
    _m("log_lines_skipped_total", "counter", "Log lines that were not Dynamo JSONL (skipped).", (), "dynamo_logs"),
    _m("log_line_errors_total", "counter", "Log lines whose handling failed (skipped; the rest of the batch kept).", (), "dynamo_logs"),
    _m("log_counters_shed_total", "counter", "(level, target) line counters dropped, least recently seen first, to keep 200.", (), "dynamo_logs"),
    _m("log_request_index_bytes", "gauge", "Approximate bytes of log lines kept for /diagnose/request (capped at 8 MiB).", (), "dynamo_logs"),
    _m("log_lines_truncated_total", "counter", "Log lines longer than 64 KiB (dropped).", (), "dynamo_logs"),
    _m("log_rotations_total", "counter", "Log file rotations and truncations followed.", (), "dynamo_logs"),
    _m("log_bytes_read_total", "counter", "Bytes of log read.", (), "dynamo_logs"),
    _m("log_files", "gauge", "Log files currently tailed.", (), "dynamo_logs"),
    # --- derived from Dynamo metrics over the history window -------------------------
    _m("dynamo_request_rate", "gauge", "Frontend requests per second over the window.", ("window",), "signals"),
    _m("dynamo_error_rate", "gauge", "Frontend failed requests per second over the window.", ("window",), "signals"),
    _m("dynamo_inflight_requests", "gauge", "In-flight requests now (frontend, worker).", ("source",), "signals"),
    _m("dynamo_queued_requests", "gauge", "Requests queued at the frontend now.", (), "signals"),
    _m("dynamo_stalled_seconds", "gauge", "Seconds Dynamo has held requests in flight without producing any output (0 while it progresses or holds nothing), as engine_hung judges it.", (), "signals"),
    _m("dynamo_latency_seconds", "gauge", "Latency percentile (p50, p90, p99) over the window from Dynamo's histograms, as PromQL histogram_quantile computes it.", ("signal", "percentile", "window"), "signals"),
    _m("dynamo_rejection_rate", "gauge", "Rejected requests per second over the window.", ("window",), "signals"),
    _m("dynamo_migration_rate", "gauge", "Migrated requests per second over the window.", ("window",), "signals"),
    _m("dynamo_bytes_rate", "gauge", "Worker request/response bytes per second over the window.", ("direction", "window"), "signals"),
)
# fmt: on

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}
_BY_FAMILY: dict[str, MetricSpec] = {spec.family: spec for spec in CATALOGUE}

_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def spec_for_sample(sample_name: str) -> MetricSpec | None:
    """The spec a series belongs to, accepting histogram suffixes."""
    spec = BY_NAME.get(sample_name)
    if spec is not None:
        return spec
    for suffix in _SUFFIXES:
        if sample_name.endswith(suffix):
            spec = _BY_FAMILY.get(sample_name[: -len(suffix)])
            if spec is not None and spec.type == "histogram":
                return spec
    return None


def _label_doc(spec: MetricSpec, label: str) -> str:
    values = spec.allowed(label)
    return f"`{label}`" if values is None else f"`{label}` ({', '.join(values)})"


def markdown_table() -> str:
    rows = ["| metric | type | unit | labels | source | help |", "| --- | --- | --- | --- | --- | --- |"]
    for spec in CATALOGUE:
        labels = ", ".join(_label_doc(spec, label) for label in spec.labels) or "-"
        unit = spec.unit or "-"
        rows.append(f"| `{spec.name}` | {spec.type} | {unit} | {labels} | {spec.source} | {spec.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
