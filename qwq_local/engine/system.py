"""What the installed llama.cpp build can do: GPU offload, backends, system info."""

from __future__ import annotations

import llama_cpp


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def backend_info() -> dict[str, object]:
    """Version, offload support and the backend flags llama.cpp reports (CUDA, METAL, AVX2, ...)."""
    system = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    flags = system.lower()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "gpu_offload": gpu_offload_supported(),
        "cuda": "cuda" in flags,
        "metal": "metal" in flags,
        "mmap": bool(llama_cpp.llama_supports_mmap()),
        "amx": "amx_int8 = 1" in flags,
        "system_info": system,
    }
