"""Memory planning: GPU/RAM probing (llama.cpp's device list, psutil), offload layers, YaRN context extension.

Pure functions over the devices llama.cpp reports; the llama.cpp query itself lives in engine/system.py.
"""

from __future__ import annotations

import math
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qwq_local.errors import ContextTooLargeError, OutOfMemoryError, UsageError

GiB = 1024**3
RESERVE_BYTES = 512 * 1024**2  # compute buffers and driver overhead kept free on the GPU


@dataclass(frozen=True)
class Device:
    """A GPU llama.cpp can offload to, with the memory it can use now."""

    kind: str  # the llama.cpp backend: "cuda" | "metal" | "vulkan" | "rocm" | "sycl" | ...
    name: str
    total_bytes: int
    free_bytes: int
    shared_memory: bool = False  # an integrated GPU: its memory is the RAM
    count: int = 1  # GPUs counted together (llama.cpp splits the layers over all of them)

    @property
    def unified(self) -> bool:
        return self.shared_memory or self.kind == "metal"


@dataclass(frozen=True)
class BackendDevice:
    """One entry of llama.cpp's device list (ggml_backend_dev_*): name, description, type, memory."""

    name: str  # "CUDA0", "Vulkan0", "ROCm1", "SYCL0", "Metal", "CPU"
    description: str
    type: int  # ggml_backend_dev_type: 0 CPU, 1 GPU, 2 integrated GPU, 3 accelerator, 4 meta
    free_bytes: int
    total_bytes: int


GGML_DEVICE_GPU, GGML_DEVICE_IGPU = 1, 2


KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # per element: ggml's blocks of 32 with a scale


@dataclass(frozen=True)
class KVCache:
    """The KV cache's element types (llama.cpp's type_k/type_v) and flash attention."""

    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False

    @classmethod
    def parse(cls, type_k: str, type_v: str, flash_attn: bool) -> KVCache:
        """Checked before anything loads: known types, and a quantised V cache only with flash attention."""
        for flag, value in (("--cache-type-k", type_k), ("--cache-type-v", type_v)):
            if value not in KV_TYPE_BYTES:
                raise UsageError(f"{flag} must be one of {' | '.join(KV_TYPE_BYTES)}, got {value!r}")
        if type_v != "f16" and not flash_attn:
            raise UsageError(f"--cache-type-v {type_v} needs --flash-attn (llama.cpp quantises V only with it)")
        return cls(type_k, type_v, flash_attn)

    @property
    def element_bytes(self) -> tuple[float, float]:
        """Bytes per K and per V element."""
        return KV_TYPE_BYTES[self.type_k], KV_TYPE_BYTES[self.type_v]

    def describe(self) -> str:
        types = self.type_k if self.type_k == self.type_v else f"K {self.type_k}, V {self.type_v}"
        return f"{types}{', flash attention' if self.flash_attn else ''}"


@dataclass(frozen=True)
class RopePlan:
    """Context extension: YaRN with `factor` over `orig_ctx`, or none."""

    yarn: bool
    factor: float
    orig_ctx: int

    @property
    def freq_scale(self) -> float:
        return 1.0 / self.factor


@dataclass(frozen=True)
class OffloadPlan:
    """How a model and its KV cache are split between GPU and RAM."""

    n_layer: int
    n_gpu_layers: int  # layers on the GPU; n_layer + 1 means everything (output layer too)
    model_bytes: int
    kv_bytes: int
    gpu_bytes: int
    ram_bytes: int
    device: Device | None
    ram_free_bytes: int
    shortfall_bytes: int = 0  # how much more free memory model + KV cache need (0: it fits)

    @property
    def full_offload(self) -> bool:
        return self.n_gpu_layers > self.n_layer

    @property
    def llama_n_gpu_layers(self) -> int:
        """The value for llama.cpp's n_gpu_layers (-1 means all)."""
        return -1 if self.full_offload else self.n_gpu_layers

    def describe(self) -> str:
        where = f"{self.device.kind.upper()} {self.device.name}" if self.device else "CPU only"
        short = f"; does not fit here: {fmt_bytes(self.shortfall_bytes)} more free memory needed" \
            if self.shortfall_bytes else ""
        return (
            f"{where}: {self.n_gpu_layers if not self.full_offload else 'all'}/{self.n_layer} layers on GPU, "
            f"GPU {fmt_bytes(self.gpu_bytes)}, RAM {fmt_bytes(self.ram_bytes)} "
            f"(model {fmt_bytes(self.model_bytes)} + KV {fmt_bytes(self.kv_bytes)}){short}"
        )


def fmt_bytes(n: float) -> str:
    """Human size with binary units: 1.5 GiB, 300 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plan_rope(requested_ctx: int, native_ctx: int, max_factor: float = 4.0, *, prompt_tokens: int = 0,
              yarn_from: int = 0) -> RopePlan:
    """YaRN beyond the native context (the smallest integer factor that covers it), and for a prompt longer
    than `yarn_from` tokens at the model's own factor (QwQ's card: past 8,192 tokens, factor 4); else none,
    since static YaRN costs quality on short texts."""
    if native_ctx <= 0:
        return RopePlan(yarn=False, factor=1.0, orig_ctx=native_ctx)
    if requested_ctx <= native_ctx:
        if yarn_from and prompt_tokens > yarn_from and max_factor > 1:
            return RopePlan(yarn=True, factor=max_factor, orig_ctx=native_ctx)
        return RopePlan(yarn=False, factor=1.0, orig_ctx=native_ctx)
    factor = float(math.ceil(requested_ctx / native_ctx))
    if factor > max_factor:
        limit = int(native_ctx * max_factor)
        raise ContextTooLargeError(
            f"context {requested_ctx:,} exceeds what this model supports even with YaRN "
            f"({native_ctx:,} x {max_factor:g} = {limit:,} tokens)"
        )
    return RopePlan(yarn=True, factor=factor, orig_ctx=native_ctx)


def parse_gpu_layers(value: str | int) -> str | int:
    """`auto`, `all` or a non-negative layer count."""
    if isinstance(value, int):
        text = str(value)
    else:
        text = value.strip().lower()
    if text in ("auto", "all"):
        return text
    if text.isdigit():
        return int(text)
    raise UsageError(f"--gpu-layers must be auto, all or a number, got {value!r}")


def plan_offload(
    *,
    model_bytes: int,
    n_layer: int,
    kv_bytes: int,
    device: Device | None,
    ram_free_bytes: int,
    gpu_layers: str | int = "auto",
    gpu_supported: bool = True,
    refuse: bool = True,
) -> OffloadPlan:
    """Put all layers on the GPU if model + KV fit, else the most that fit; refuse what fits nowhere.

    `refuse=False` returns the plan of what does not fit, with its shortfall, for `qwq info` to show.
    """
    request = parse_gpu_layers(gpu_layers)
    per_layer = model_bytes / (n_layer + 1)  # the output/embedding tensors count as one more layer
    kv_layer = kv_bytes / max(n_layer, 1)
    usable = 0 if (device is None or not gpu_supported) else max(device.free_bytes - RESERVE_BYTES, 0)
    if request == "all":
        layers = n_layer + 1
    elif request == "auto":
        if model_bytes + kv_bytes <= usable:
            layers = n_layer + 1
        else:
            layers = min(n_layer, int(usable // (per_layer + kv_layer))) if usable else 0
    else:
        layers = min(int(request), n_layer + 1)
    if device is None or not gpu_supported:
        layers = 0
    on_gpu_layers = min(layers, n_layer)
    gpu_bytes = int(per_layer * layers + kv_layer * on_gpu_layers)
    ram_bytes = model_bytes + kv_bytes - gpu_bytes
    unified = device is not None and device.unified
    capacity = ram_free_bytes if unified else usable + ram_free_bytes
    plan = OffloadPlan(
        n_layer=n_layer,
        n_gpu_layers=layers,
        model_bytes=model_bytes,
        kv_bytes=kv_bytes,
        gpu_bytes=gpu_bytes,
        ram_bytes=ram_bytes,
        device=device,
        ram_free_bytes=ram_free_bytes,
        shortfall_bytes=max(model_bytes + kv_bytes - capacity, 0),
    )
    if plan.shortfall_bytes and refuse:
        raise OutOfMemoryError(
            f"not enough memory: model {fmt_bytes(model_bytes)} + KV cache {fmt_bytes(kv_bytes)} "
            f"need {fmt_bytes(model_bytes + kv_bytes)}, but only {fmt_bytes(ram_free_bytes)} RAM"
            + (f" + {fmt_bytes(usable)} GPU" if usable and not unified else "")
            + " is free; try a smaller quant or a smaller --ctx"
        )
    return plan


def ram_free_bytes() -> int:
    """Memory available to a new process without swapping (psutil, on every OS)."""
    import psutil

    return int(psutil.virtual_memory().available)


def device_kind(name: str) -> str:
    """The backend of a llama.cpp device name: CUDA0 -> cuda, Vulkan1 -> vulkan, MTL0 -> metal."""
    kind = re.sub(r"\d+$", "", name).lower()
    return "metal" if kind == "mtl" else kind


def gpus_from_backend(devices: Sequence[BackendDevice]) -> Device | None:
    """llama.cpp's GPUs (dedicated and integrated, any backend) as one Device whose memory is their sum."""
    gpus = [d for d in devices if d.type in (GGML_DEVICE_GPU, GGML_DEVICE_IGPU)]
    if not gpus:
        return None
    kinds = dict.fromkeys(device_kind(d.name) for d in gpus)  # in llama.cpp's order, once each
    return Device(
        kind="+".join(kinds),
        name=" + ".join(d.description or d.name for d in gpus),
        total_bytes=sum(d.total_bytes for d in gpus),
        free_bytes=sum(d.free_bytes for d in gpus),
        shared_memory=all(d.type == GGML_DEVICE_IGPU for d in gpus),
        count=len(gpus),
    )


def backend_devices() -> list[BackendDevice]:
    """The devices of the installed llama.cpp build ([] where it cannot say)."""
    try:
        from qwq_local.engine.system import backend_devices as query

        return query()
    except (ImportError, OSError, AttributeError):
        return []


def detect_gpu(query: Callable[[], Sequence[BackendDevice]] = backend_devices) -> Device | None:
    """The GPUs llama.cpp can offload to (CUDA, Metal, Vulkan, ROCm, SYCL, ...), with their free memory.

    When the build has none, a GPU the build cannot use is still reported (NVML, nvidia-smi, Apple
    silicon) so that `qwq doctor` can say so.
    """
    return gpus_from_backend(query()) or _cuda_nvml() or _cuda_smi() or _metal()


def _cuda_nvml() -> Device | None:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        return Device("cuda", name.decode() if isinstance(name, bytes) else name, mem.total, mem.free)
    except Exception:
        return None


def _cuda_smi() -> Device | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> Device | None:
    """First line of `nvidia-smi --query-gpu=name,memory.total,memory.free` (MiB) as a Device."""
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            return Device("cuda", parts[0], int(parts[1]) * 1024**2, int(parts[2]) * 1024**2)
    return None


def _metal() -> Device | None:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return None
    try:
        total = int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True,
                                   text=True, timeout=5, check=True).stdout.strip())
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    # Metal's recommendedMaxWorkingSetSize is about 2/3 of RAM up to 36 GiB, 3/4 above.
    working_set = int(total * (0.75 if total > 36 * GiB else 0.66))
    return Device("metal", "Apple silicon", working_set, working_set)
