"""GPUs over NVML (nvidia-ml-py's `pynvml`): utilisation, memory, temperature, power, clocks,
clock event (throttle) reasons, ECC, retired/remapped rows, PCIe, NVLink, fans, persistence,
per-process memory mapped to the Dynamo processes; XID errors from an NVML event set on a
background thread.

NVML calls block and can be slow on a sick GPU: they run on one dedicated thread, and a call
still running when the next collection comes is reported, not stacked. No library, no driver
or no device is a state (`dynamo_sidecar_gpu_available 0` with the reason, logged once), not
a failure of the sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent.core import metrics as m
from agent.core.facts import GpuFact, GpuFacts
from agent.core.handles import Handle
from agent.core.log import get as get_logger
from agent.core.samples import CollectResult, Event, Labels, Sample
from agent.core.xid import xid_class
from collectors.base import Collector, CollectorSpec, register

log = get_logger("dynamo_sidecar.gpu")


CLOCK_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
MAX_NVLINKS = 18


# --- a GPU's reading and how it is emitted ---------------------------------------------------
# As node_exporter's meminfo: a reader fills a typed reading in the source's own units, and a
# table maps each field to its metric, its labels and the unit conversion. The collector's
# logic (which call, when, what a lost GPU means) stays in the reader; what is exposed is read
# off the table.

Keyed = dict[Any, Any]  # label value (or tuple of them) -> value


@dataclass
class DeviceReading:
    """One GPU's answers in one collection, in NVML's units. A field NVML did not answer (not
    supported, an error) stays None or empty and is not emitted."""

    lost: bool = False  # NVML_ERROR_GPU_IS_LOST: nothing else was read
    utilization: Keyed = field(default_factory=dict)  # kind (gpu, memory) -> percent
    memory: Keyed = field(default_factory=dict)  # state (used, free, total) -> bytes
    temperature: int | None = None  # Celsius
    temperature_thresholds: Keyed = field(default_factory=dict)  # slowdown, shutdown -> Celsius
    power_mw: int | None = None
    power_limit_mw: int | None = None
    clocks_mhz: Keyed = field(default_factory=dict)  # sm, memory
    clock_event_reasons: dict[str, bool] = field(default_factory=dict)  # every known reason -> active
    ecc: Keyed = field(default_factory=dict)  # (corrected|uncorrected, volatile|aggregate) -> errors
    retired_pages: Keyed = field(default_factory=dict)  # single_bit, double_bit -> pages
    remapped_rows: Keyed = field(default_factory=dict)  # correctable, uncorrectable, pending, failure
    pcie_replays: int | None = None
    pcie_throughput_kbs: Keyed = field(default_factory=dict)  # tx, rx -> KB/s
    fan_percent: int | None = None
    persistence: int | None = None  # 1 on, 0 off
    nvlink_errors: Keyed = field(default_factory=dict)  # (link, replay|recovery|crc_flit) -> errors
    # ((pid, process), bytes) per Dynamo process, then (("", "other"), the rest); None: not answered
    process_memory: list[tuple[tuple[Any, str], int]] | None = None

    def fact(self, identity: dict[str, str]) -> GpuFact:
        """What the rules read, derived from the reading (never set beside it)."""
        fact = GpuFact(identity["uuid"], identity["name"], identity["pci_bus_id"], lost=self.lost)
        if self.lost:
            return fact
        if self.utilization:
            fact.utilization = self.utilization["gpu"] / 100
        if self.memory:
            fact.memory_used, fact.memory_total = self.memory["used"], self.memory["total"]
        fact.temperature = self.temperature
        fact.temperature_thresholds = dict(self.temperature_thresholds)
        fact.power_watts = None if self.power_mw is None else self.power_mw / 1000
        fact.power_limit_watts = None if self.power_limit_mw is None else self.power_limit_mw / 1000
        fact.clock_event_reasons = [reason for reason, on in self.clock_event_reasons.items() if on]
        fact.ecc = {f"{kind}_{counter}": value for (kind, counter), value in self.ecc.items()}
        if self.remapped_rows:
            fact.remap_pending = self.remapped_rows.get("pending", 0)
            fact.remap_failure = self.remapped_rows.get("failure", 0)
        if self.process_memory is not None:
            # The last entry is everything else ("other"): not a Dynamo process.
            fact.processes = [
                {"pid": pid, "process": process, "memory": used}
                for (pid, process), used in self.process_memory[:-1]
            ]
        return fact


@dataclass(frozen=True)
class Emitted:
    """One row of the table: a reading field, the metric it becomes, the label names of its
    keys (none for a scalar) and the conversion from NVML's unit to the metric's."""

    field: str
    metric: Handle
    labels: tuple[str, ...] = ()
    convert: Callable[[Any], float] | None = None


# In exposition order. The handles check the label names at every emission.
EMITTED: tuple[Emitted, ...] = (
    Emitted("utilization", m.GPU_UTILIZATION_RATIO, ("kind",), lambda percent: percent / 100),
    Emitted("memory", m.GPU_MEMORY_BYTES, ("state",)),
    Emitted("temperature", m.GPU_TEMPERATURE_CELSIUS),
    Emitted("temperature_thresholds", m.GPU_TEMPERATURE_THRESHOLD_CELSIUS, ("threshold",)),
    Emitted("power_mw", m.GPU_POWER_WATTS, (), lambda mw: mw / 1000),
    Emitted("power_limit_mw", m.GPU_POWER_LIMIT_WATTS, (), lambda mw: mw / 1000),
    Emitted("clocks_mhz", m.GPU_CLOCK_HERTZ, ("clock",), lambda mhz: mhz * 1e6),
    Emitted("clock_event_reasons", m.GPU_CLOCK_EVENT_REASON, ("reason",), lambda on: 1 if on else 0),
    Emitted("ecc", m.GPU_ECC_ERRORS_TOTAL, ("type", "counter")),
    Emitted("retired_pages", m.GPU_RETIRED_PAGES, ("cause",)),
    Emitted("remapped_rows", m.GPU_REMAPPED_ROWS, ("kind",)),
    Emitted("pcie_replays", m.GPU_PCIE_REPLAYS_TOTAL),
    Emitted(
        "pcie_throughput_kbs",
        m.GPU_PCIE_THROUGHPUT_BYTES_PER_SECOND,
        ("direction",),
        lambda kbs: kbs * 1024,
    ),
    Emitted("fan_percent", m.GPU_FAN_SPEED_RATIO, (), lambda percent: percent / 100),
    Emitted("persistence", m.GPU_PERSISTENCE_MODE),
    Emitted("nvlink_errors", m.GPU_NVLINK_ERRORS_TOTAL, ("link", "counter")),
    Emitted("process_memory", m.GPU_PROCESS_MEMORY_BYTES, ("pid", "process")),
)


def emit(result: CollectResult, reading: DeviceReading, gpu: dict[str, str]) -> None:
    """Every answered field of the reading as samples, row by row of EMITTED. The definition
    of what a reading exposes; the collector runs DeviceEmitter, which gives the same."""
    for row in EMITTED:
        value = getattr(reading, row.field)
        if value is not None:
            emit_row(result, row, value, gpu)


def emit_row(result: CollectResult, row: Emitted, value: Any, gpu: dict[str, str]) -> None:
    """One answered field: a sample per key (one for a scalar)."""
    keyed = value.items() if isinstance(value, dict) else value if row.labels else [((), value)]
    for key, raw in keyed:
        values = key if isinstance(key, tuple) else (key,)
        labels = dict(zip(row.labels, values, strict=True))
        result.add(row.metric.sample_of(row.convert(raw) if row.convert else raw, {**labels, **gpu}))


# Most of a collection's CPU went to building label sets and samples that were the same as
# last time (issue 28): an idle GPU's thresholds, ECC, NVLink counters and clock reasons do
# not move between collections. Past this many keys a row's remembered label sets are dropped
# (process_memory's pids come and go); the other rows have at most 54 (NVLink).
MAX_KEYS_PER_ROW = 256
_NOTHING_YET = object()


class DeviceEmitter:
    """emit() for one GPU, reusing what its last emission built: the same samples, in the
    same order (tests/test_gpu_emitter.py holds the two equal over random sequences).

    Per row of EMITTED it keeps the field's last value and the samples made from it; an equal
    value (a dict: the same keys in the same order with equal values) gives those samples
    again (they are frozen). A changed field is emitted key by key, each key's label set
    remembered. Equal values give equal samples because the reader builds every row's keys
    with one type per position (names, link numbers, pids): 1 and True never both appear as a
    key, which would be equal but print differently; and NVML answers integers (no NaN, which
    is not equal to itself, no -0.0, equal to 0.0 but printed apart)."""

    def __init__(self, gpu: dict[str, str]) -> None:
        self.gpu = gpu
        # A row whose label names the catalogue does not declare is emitted afresh every time,
        # so the handle counts (or, in strict mode, raises on) every emission as emit() does.
        self.reusable = [
            frozenset((*row.labels, *gpu)) == frozenset(row.metric.spec.labels) for row in EMITTED
        ]
        self._last_values: list[Any] = [_NOTHING_YET] * len(EMITTED)
        self._last_samples: list[list[Sample]] = [[] for _ in EMITTED]
        self.labels_by_key: list[dict[Any, Labels]] = [{} for _ in EMITTED]

    def emit(self, result: CollectResult, reading: DeviceReading) -> None:
        for position, row in enumerate(EMITTED):
            value = getattr(reading, row.field)
            if value is None:
                continue
            if not self.reusable[position]:
                emit_row(result, row, value, self.gpu)
                continue
            # Copies: the reading's dict or list is not ours to keep.
            if isinstance(value, dict):
                snapshot: Any = list(value.items())
            elif isinstance(value, list):
                snapshot = list(value)
            else:
                snapshot = value
            if snapshot != self._last_values[position]:
                # The value last: a row that raised half-way is not taken as emitted.
                self._last_samples[position] = self._samples(row, self.labels_by_key[position], value)
                self._last_values[position] = snapshot
            result.samples.extend(self._last_samples[position])

    def _samples(self, row: Emitted, labels_by_key: dict[Any, Labels], value: Any) -> list[Sample]:
        """The row's samples as emit_row() makes them, with each key's label set made once."""
        out = []
        keyed = value.items() if isinstance(value, dict) else value if row.labels else [((), value)]
        for key, raw in keyed:
            number = row.convert(raw) if row.convert else raw
            labels = labels_by_key.get(key)
            if labels is None:
                # The first time: through the handle, which checks the label values.
                values = key if isinstance(key, tuple) else (key,)
                made = row.metric.sample_of(
                    number, {**dict(zip(row.labels, values, strict=True)), **self.gpu}
                )
                if len(labels_by_key) >= MAX_KEYS_PER_ROW:
                    labels_by_key.clear()
                labels_by_key[key] = made.labels
                out.append(made)
            else:
                out.append(Sample(row.metric.name, labels, float(number)))
        return out


class _Nvml:
    """The pynvml module, imported on first use (it is only a binding: it needs the library)."""

    def __init__(self) -> None:
        import pynvml

        self.lib = pynvml

    def error_name(self, exc: Exception) -> str:
        value = getattr(exc, "value", None)
        names = {
            self.lib.NVML_ERROR_NOT_SUPPORTED: "not_supported",
            self.lib.NVML_ERROR_GPU_IS_LOST: "gpu_is_lost",
            self.lib.NVML_ERROR_DRIVER_NOT_LOADED: "driver_not_loaded",
            self.lib.NVML_ERROR_LIBRARY_NOT_FOUND: "library_not_found",
            self.lib.NVML_ERROR_NO_PERMISSION: "no_permission",
            self.lib.NVML_ERROR_TIMEOUT: "timeout",
            self.lib.NVML_ERROR_FUNCTION_NOT_FOUND: "function_not_found",
            self.lib.NVML_ERROR_UNKNOWN: "unknown",
        }
        return names.get(value, f"nvml_error_{value}")


class XidWatcher:
    """Waits on an NVML event set on its own thread; never blocks the event loop."""

    def __init__(
        self,
        nvml: _Nvml,
        handles: dict[int, Any],
        uuids: dict[int, str],
        max_events: int = 1000,
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        self.nvml = nvml
        self.on_event = on_event  # called on this thread after each event is queued
        self.handles = handles
        self.uuids = uuids
        self.events: deque[tuple[float, int, int]] = deque(maxlen=max_events)
        self.error = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def drain(self) -> list[tuple[float, int, int]]:
        with self._lock:
            items = list(self.events)
            self.events.clear()
        return items

    def _run(self) -> None:
        lib = self.nvml.lib
        try:
            event_set = lib.nvmlEventSetCreate()
            registered = 0
            for handle in self.handles.values():
                try:
                    lib.nvmlDeviceRegisterEvents(handle, lib.nvmlEventTypeXidCriticalError, event_set)
                    registered += 1
                except lib.NVMLError as exc:
                    self.error = f"register events: {self.nvml.error_name(exc)}"
            if not registered:
                return
        except lib.NVMLError as exc:
            self.error = f"event set: {self.nvml.error_name(exc)}"
            return
        index_of = {id(h): i for i, h in self.handles.items()}
        while not self._stop.is_set():
            try:
                # Long enough not to wake (and raise a Python timeout error) twice a second;
                # stop() joins for at most 2 s, and the thread is a daemon.
                data = lib.nvmlEventSetWait(event_set, 2000)
            except lib.NVMLError as exc:
                if getattr(exc, "value", None) != lib.NVML_ERROR_TIMEOUT:
                    self.error = f"event wait: {self.nvml.error_name(exc)}"
                    self._stop.wait(1.0)  # do not spin on a broken event set
                continue
            try:
                index = lib.nvmlDeviceGetIndex(data.device)
            except lib.NVMLError:
                index = index_of.get(id(data.device), -1)
            with self._lock:
                self.events.append((time.time(), int(index), int(data.eventData)))
            self.on_event()
        with contextlib.suppress(lib.NVMLError):
            lib.nvmlEventSetFree(event_set)


# Readings that change on a scale of minutes or only with an operator's action (thresholds,
# power limit, persistence mode, lifetime ECC, retired pages, row remapping): asked every
# SLOW_EVERY seconds and repeated from the last answer in between, as dcgm-exporter polls
# such fields slowly. Volatile ECC, XIDs and everything live are read every collection.
SLOW_EVERY = 60.0
SLOW_CALLS = frozenset(
    {
        "nvmlDeviceGetTemperatureThreshold",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetPersistenceMode",
        "nvmlDeviceGetRetiredPages",
        "nvmlDeviceGetRemappedRows",
    }
)


class GpuCollector(Collector):
    name = "gpu"

    def __init__(
        self, interval: float, timeout: float, dynamo_pids: Callable[[], dict[int, str]] | None = None
    ) -> None:
        super().__init__(interval, timeout)
        self.dynamo_pids = dynamo_pids or (lambda: {})
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self._running: Future[CollectResult] | None = None
        self._nvml: _Nvml | None = None
        self._initialized = False
        self.unavailable_reason = ""
        self._logged_reason = ""
        self._handles: dict[int, Any] = {}
        self._static: dict[int, dict[str, str]] = {}
        self._emitters: dict[int, DeviceEmitter] = {}
        self._lost: set[int] = set()
        self._unsupported: set[tuple[int, str]] = set()
        self._nvlink_count: dict[int, int] = {}  # GPU index -> its links, once NVML said
        self._slow_values: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._xid_counts: dict[tuple[str, str], int] = {}
        self._recent_xids: deque[dict[str, Any]] = deque(maxlen=100)
        self.watcher: XidWatcher | None = None

    # --- set-up ------------------------------------------------------------------------
    def _init(self) -> bool:
        if self._initialized:
            return True
        try:
            self._nvml = self._nvml or _Nvml()
        except ImportError:
            self._unavailable("binding_not_installed", "nvidia-ml-py is not installed")
            return False
        lib = self._nvml.lib
        try:
            lib.nvmlInit()
            count = lib.nvmlDeviceGetCount()
        except lib.NVMLError as exc:
            self._unavailable(self._nvml.error_name(exc), str(exc))
            return False
        if count == 0:
            self._unavailable("no_devices", "NVML found no GPU")
            lib.nvmlShutdown()
            return False
        for index in range(count):
            try:
                handle = lib.nvmlDeviceGetHandleByIndex(index)
            except lib.NVMLError as exc:
                self._note_error(index, "nvmlDeviceGetHandleByIndex", exc)
                continue
            self._handles[index] = handle
            self._static[index] = self._identity(index, handle)
            self._emitters[index] = DeviceEmitter({"gpu": str(index), "uuid": self._static[index]["uuid"]})
        self._initialized = True
        self.unavailable_reason = ""
        log.info("NVML initialised", gpus=len(self._handles), driver=self._driver())
        uuids = {i: s["uuid"] for i, s in self._static.items()}
        # An XID is read by the next collection, asked for at once: an XID is a critical
        # finding whatever the GPU interval or a quiet pod's pace.
        self.watcher = XidWatcher(self._nvml, dict(self._handles), uuids, on_event=lambda: self.wake())
        self.watcher.start()
        return True

    def _driver(self) -> str:
        assert self._nvml is not None
        try:
            return str(self._nvml.lib.nvmlSystemGetDriverVersion())
        except self._nvml.lib.NVMLError:
            return ""

    def _unavailable(self, reason: str, detail: str) -> None:
        self.unavailable_reason = reason
        if reason != self._logged_reason:  # once per reason, not every interval
            log.info("GPU metrics unavailable", reason=reason, detail=detail)
            self._logged_reason = reason

    def _identity(self, index: int, handle: Any) -> dict[str, str]:
        lib = self._nvml.lib  # type: ignore[union-attr]
        identity = {"uuid": f"unknown-{index}", "name": "", "pci_bus_id": ""}
        for key, call in (("uuid", lib.nvmlDeviceGetUUID), ("name", lib.nvmlDeviceGetName)):
            try:
                identity[key] = str(call(handle))
            except lib.NVMLError as exc:
                self._note_error(index, call.__name__, exc)
        try:
            bus = lib.nvmlDeviceGetPciInfo(handle).busId
            identity["pci_bus_id"] = bus.decode() if isinstance(bus, bytes) else str(bus)
        except lib.NVMLError as exc:
            self._note_error(index, "nvmlDeviceGetPciInfo", exc)
        return identity

    def _note_error(self, index: int, function: str, exc: Exception) -> str:
        assert self._nvml is not None
        name = self._nvml.error_name(exc)
        if name == "not_supported":
            self._unsupported.add((index, function))
        else:
            key = (str(index), function, name)
            self._errors[key] = self._errors.get(key, 0) + 1
        if name == "gpu_is_lost":
            self._lost.add(index)
        return name

    # --- collection (on the NVML thread) -------------------------------------------------
    def _collect_sync(self) -> CollectResult:
        result = CollectResult()
        now = time.time()
        if not self._init():
            result.add(m.GPU_AVAILABLE.sample(0, reason=self.unavailable_reason))
            result.facts = GpuFacts(False, self.unavailable_reason, time=now)
            return result
        result.add(m.GPU_AVAILABLE.sample(1, reason="ok"))
        pids = self.dynamo_pids()
        gpus: dict[str, GpuFact] = {}
        for index, handle in self._handles.items():
            gpus[str(index)] = self._device(result, index, handle, pids, now)
        self._xids(result)
        for (gpu, function, error), count in self._errors.items():
            result.add(m.GPU_NVML_ERRORS_TOTAL.sample(count, gpu=gpu, function=function, error=error))
        for (gpu, xid), count in self._xid_counts.items():
            result.add(m.GPU_XID_ERRORS_TOTAL.sample(count, gpu=gpu, xid=xid))
        result.facts = GpuFacts(
            True,
            "",
            gpus,
            list(self._recent_xids),
            self.watcher.error if self.watcher else "",
            now,
        )
        return result

    def _device(
        self, result: CollectResult, index: int, handle: Any, pids: dict[int, str], now: float
    ) -> GpuFact:
        """One GPU: read it (NVML, in NVML's units), then emit the reading through the table."""
        identity = self._static[index]
        emitter = self._emitters[index]
        gpu = emitter.gpu
        result.add(m.GPU_INFO.sample(1, name=identity["name"], pci_bus_id=identity["pci_bus_id"], **gpu))
        was_lost = index in self._lost
        reading = self._read(index, handle, pids, now)
        if reading.lost:
            # Every further call would fail the same way: report the loss once and move on.
            result.add(m.GPU_LOST.sample(1, **gpu))
            if not was_lost:
                message = f"GPU {index} ({identity['uuid']}) is lost: NVML_ERROR_GPU_IS_LOST"
                log.error("GPU lost", gpu=index, uuid=identity["uuid"])
                result.events.append(
                    Event("gpu_lost", f"gpu{index}", message, now, {"gpu": index, "uuid": identity["uuid"]})
                )
        else:
            result.add(m.GPU_LOST.sample(0, **gpu))
            emitter.emit(result, reading)
        return reading.fact(identity)

    def _read(self, index: int, handle: Any, pids: dict[int, str], now: float) -> DeviceReading:
        """Everything NVML answers about one GPU, in its own units. The calls are made in this
        order every time (a lost GPU shows at the first); an unanswered one leaves its field
        empty. Slow-changing readings come from the last answer until SLOW_EVERY has passed."""
        lib = self._nvml.lib  # type: ignore[union-attr]

        def call(function: Callable[..., Any], *args: Any) -> Any:
            name = function.__name__
            if (index, name) in self._unsupported:
                return None
            slow = name in SLOW_CALLS or (
                name == "nvmlDeviceGetTotalEccErrors" and args[-1] == lib.NVML_AGGREGATE_ECC
            )
            if not slow:
                try:
                    return function(handle, *args)
                except lib.NVMLError as exc:
                    self._note_error(index, name, exc)
                    return None
            key = (index, name, args)
            cached = self._slow_values.get(key)
            if cached is not None and now - cached[0] < SLOW_EVERY:
                return cached[1]
            try:
                value = function(handle, *args)
            except lib.NVMLError as exc:
                self._note_error(index, name, exc)
                return None
            self._slow_values[key] = (now, value)
            return value

        def each(
            names: tuple[tuple[str, Any], ...], function: Callable[..., Any], *args: Any
        ) -> dict[str, Any]:
            """One call per (name, NVML argument); the names that answered."""
            out = {}
            for name, argument in names:
                value = call(function, *args, argument)
                if value is not None:
                    out[name] = value
            return out

        reading = DeviceReading()
        self._lost.discard(index)  # a reset GPU comes back: ask again every cycle
        utilization = call(lib.nvmlDeviceGetUtilizationRates)
        if index in self._lost:
            reading.lost = True
            return reading
        if utilization is not None:
            reading.utilization = {"gpu": utilization.gpu, "memory": utilization.memory}
        memory = call(lib.nvmlDeviceGetMemoryInfo)
        if memory is not None:
            reading.memory = {state: getattr(memory, state) for state in ("used", "free", "total")}
        reading.temperature = call(lib.nvmlDeviceGetTemperature, lib.NVML_TEMPERATURE_GPU)
        reading.temperature_thresholds = each(
            (
                ("slowdown", lib.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
                ("shutdown", lib.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
            ),
            lib.nvmlDeviceGetTemperatureThreshold,
        )
        reading.power_mw = call(lib.nvmlDeviceGetPowerUsage)
        reading.power_limit_mw = call(lib.nvmlDeviceGetEnforcedPowerLimit)
        reading.clocks_mhz = each(
            (("sm", lib.NVML_CLOCK_SM), ("memory", lib.NVML_CLOCK_MEM)), lib.nvmlDeviceGetClockInfo
        )
        reasons = call(lib.nvmlDeviceGetCurrentClocksEventReasons)
        if reasons is not None:
            reading.clock_event_reasons = {
                reason: bool(reasons & bit) for bit, reason in CLOCK_REASONS.items()
            }
        for error_name, error_type in (
            ("corrected", lib.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            for counter_name, counter in each(
                (("volatile", lib.NVML_VOLATILE_ECC), ("aggregate", lib.NVML_AGGREGATE_ECC)),
                lib.nvmlDeviceGetTotalEccErrors,
                error_type,
            ).items():
                reading.ecc[(error_name, counter_name)] = counter
        pages = each(
            (
                ("single_bit", lib.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
                ("double_bit", lib.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
            ),
            lib.nvmlDeviceGetRetiredPages,
        )
        reading.retired_pages = {cause: len(retired) for cause, retired in pages.items()}
        remapped = call(lib.nvmlDeviceGetRemappedRows)
        if remapped is not None:
            kinds = ("correctable", "uncorrectable", "pending", "failure")
            reading.remapped_rows = dict(zip(kinds, remapped, strict=False))
        reading.pcie_replays = call(lib.nvmlDeviceGetPcieReplayCounter)
        reading.pcie_throughput_kbs = each(
            (("tx", lib.NVML_PCIE_UTIL_TX_BYTES), ("rx", lib.NVML_PCIE_UTIL_RX_BYTES)),
            lib.nvmlDeviceGetPcieThroughput,
        )
        reading.fan_percent = call(lib.nvmlDeviceGetFanSpeed)
        persistence = call(lib.nvmlDeviceGetPersistenceMode)
        if persistence is not None:
            reading.persistence = 1 if persistence else 0
        reading.nvlink_errors = self._nvlinks(index, handle)
        processes = call(lib.nvmlDeviceGetComputeRunningProcesses)
        if processes is not None:
            other = 0
            reading.process_memory = []
            for proc in processes:
                used = proc.usedGpuMemory or 0
                if proc.pid in pids:
                    reading.process_memory.append(((proc.pid, pids[proc.pid]), used))
                else:
                    other += used
            reading.process_memory.append((("", "other"), other))
        return reading

    def _nvlinks(self, index: int, handle: Any) -> dict[tuple[int, str], int]:
        """(link, counter) -> errors, for the active links; empty on a board without NVLink."""
        lib = self._nvml.lib  # type: ignore[union-attr]
        out: dict[tuple[int, str], int] = {}
        if (index, "nvlink") in self._unsupported:
            return out
        counters = (
            ("replay", lib.NVML_NVLINK_ERROR_DL_REPLAY),
            ("recovery", lib.NVML_NVLINK_ERROR_DL_RECOVERY),
            ("crc_flit", lib.NVML_NVLINK_ERROR_DL_CRC_FLIT),
        )
        for link in range(self._nvlink_count.get(index, MAX_NVLINKS)):
            try:
                if not lib.nvmlDeviceGetNvLinkState(handle, link):
                    continue
            except lib.NVMLError as exc:
                if link == 0:
                    # No NVLink on this board (or not supported): stop asking.
                    self._unsupported.add((index, "nvlink"))
                elif getattr(exc, "value", None) == lib.NVML_ERROR_INVALID_ARGUMENT:
                    # No such link: the board has `link` links, a count fixed in hardware.
                    # Not asked again (a failed call costs as much as three that answer);
                    # the state of every link below is still read every time.
                    self._nvlink_count[index] = link
                return out
            for name, counter in counters:
                try:
                    out[(link, name)] = lib.nvmlDeviceGetNvLinkErrorCounter(handle, link, counter)
                except lib.NVMLError:
                    continue
        return out

    def _xids(self, result: CollectResult) -> None:
        if self.watcher is None:
            return
        for timestamp, index, xid in self.watcher.drain():
            klass, description = xid_class(xid)
            uuid = self._static.get(index, {}).get("uuid", "")
            key = (str(index), str(xid))
            self._xid_counts[key] = self._xid_counts.get(key, 0) + 1
            record = {
                "time": timestamp,
                "gpu": index,
                "uuid": uuid,
                "xid": xid,
                "class": klass,
                "description": description,
            }
            self._recent_xids.append(record)
            log.warning("GPU XID error", **record)
            result.events.append(
                Event("gpu_xid", f"gpu{index}", f"XID {xid} on GPU {index}: {description}", timestamp, record)
            )

    # --- the scheduler's side ----------------------------------------------------------------
    async def collect(self) -> CollectResult:
        if self._running is not None and not self._running.done():
            # The previous NVML call has not come back: a hung driver. Do not stack threads.
            raise RuntimeError("previous NVML call still running (hung GPU driver?)")
        loop = asyncio.get_running_loop()
        future = self._executor.submit(self._collect_sync)
        self._running = future
        return await asyncio.wrap_future(future, loop=loop)

    async def close(self) -> None:
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._initialized and self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.lib.nvmlShutdown()


register(
    CollectorSpec(
        "gpu",
        order=50,
        enabled=lambda config: config.gpu_enabled,
        interval=lambda config: config.gpu_interval,
        factory=lambda config, hooks: GpuCollector(
            config.gpu_interval, config.collector_timeout, dynamo_pids=hooks.dynamo_pids
        ),
    )
)
