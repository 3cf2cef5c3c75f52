"""Resource sampling and heartbeats, from a daemon thread, every ~2 s.

Heartbeats come from a thread (not the loop) so the UI can tell "alive but inside a long step or a
checkpoint save" (heartbeats, no step progress) from "dead" (no heartbeats; the process sentinel is
the authoritative death signal). Memory numbers come from torch's allocator on the device the run
uses and from NVML for the whole GPU; anything unavailable is reported as -1, never guessed.

NVML is queried with the cheap calls only (memory, utilisation, temperature, power: ~15 µs each);
per-process queries take the driver lock and cost milliseconds, so they are not used. NVML numbers GPUs
in PCI order while CUDA may not, so the NVML handle is looked up by the CUDA device's PCI bus id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from engine import protocol

log = logging.getLogger("sidestep.engine")


class _Nvml:
    """A handle on one GPU's NVML readings, or nothing when there is no driver."""

    def __init__(self, pci_bus_id: str | None) -> None:
        self.handle = None
        if pci_bus_id is None:
            return
        try:
            import pynvml
        except ImportError as exc:
            log.info("NVML unavailable: %s", exc)
            return
        try:
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
            self.nvml = pynvml
        except (pynvml.NVMLError, OSError) as exc:  # no driver, or a device NVML does not know
            log.info("NVML unavailable: %s", exc)

    def read(self) -> dict[str, float]:
        if self.handle is None:
            return {}
        nv, h = self.nvml, self.handle
        out: dict[str, float] = {}
        for key, fn in (
            ("mem", lambda: nv.nvmlDeviceGetMemoryInfo(h)),
            ("util", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
            ("temp", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            ("power", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
        ):
            try:
                value = fn()
            except nv.NVMLError:
                continue  # e.g. power readings are not supported on some boards
            if key == "mem":
                out["gpu_used_mb"] = value.used / 2**20
                out["gpu_total_mb"] = value.total / 2**20
            else:
                out[{"util": "gpu_util_pct", "temp": "gpu_temp_c", "power": "gpu_power_w"}[key]] = float(value)
        return out


class ResourceMonitor:
    """Emits ``Heartbeat`` and ``ResourceSample`` every ``interval`` seconds until stopped."""

    def __init__(
        self,
        emit: Callable[[Any], Any],
        *,
        phase: Callable[[], protocol.Phase],
        last_step: Callable[[], int],
        interval: float = 2.0,
    ):
        self.emit = emit
        self.phase = phase
        self.last_step = last_step
        self.interval = interval
        self.device: Any = None
        self._nvml: _Nvml | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sidestep-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_device(self, device: Any) -> None:
        """Called when a run picks its device; CUDA devices get NVML readings."""
        self.device = device
        pci = None
        if getattr(device, "type", None) == "cuda":
            import torch

            props = torch.cuda.get_device_properties(device)
            pci = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"  # type: ignore[attr-defined]  # not in torch's stubs
        self._nvml = _Nvml(pci)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def sample(self) -> protocol.ResourceSample:
        values: dict[str, Any] = {}  # ResourceSample fields (floats)
        try:
            import psutil

            values["process_rss_mb"] = psutil.Process().memory_info().rss / 2**20
        except ImportError:
            pass
        device = self.device
        if getattr(device, "type", None) == "cuda":
            import torch

            values["allocated_mb"] = torch.cuda.memory_allocated(device) / 2**20
            values["reserved_mb"] = torch.cuda.memory_reserved(device) / 2**20
            values["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if self._nvml is not None:
            values.update(self._nvml.read())
        return protocol.ResourceSample(device=str(device) if device is not None else "", **values)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit(protocol.Heartbeat(phase=self.phase(), last_step=self.last_step()))
            if self.device is not None:
                self.emit(self.sample())
