"""What the installed llama.cpp build can do: GPU offload, backends, system info."""

from __future__ import annotations

import ctypes

import llama_cpp

from qwq_local.engine.plan import BackendDevice


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
        "devices": [f"{d.name} ({d.description})" for d in backend_devices()],
        "mmap": bool(llama_cpp.llama_supports_mmap()),
        "amx": "amx_int8 = 1" in flags,
        "system_info": system,
    }


def backend_devices() -> list[BackendDevice]:
    """llama.cpp's device list (ggml_backend_dev_*): every backend the build has, with free and total memory."""
    from llama_cpp._ggml import libggml

    lib = libggml
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for text in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        text.argtypes, text.restype = [ctypes.c_void_p], ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_memory.restype = None
    found = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        found.append(BackendDevice(
            name=(lib.ggml_backend_dev_name(device) or b"").decode("utf-8", "replace"),
            description=(lib.ggml_backend_dev_description(device) or b"").decode("utf-8", "replace"),
            type=int(lib.ggml_backend_dev_type(device)),
            free_bytes=int(free.value),
            total_bytes=int(total.value),
        ))
    return found
