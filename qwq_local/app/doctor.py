"""`qwq doctor`'s facts: the llama.cpp build, GPU and RAM, disk, data dir, hub reachability, the code sandbox."""

from __future__ import annotations

import os
import shutil
from typing import Any

from qwq_local.config import Settings


def doctor_report(settings: Settings) -> dict[str, Any]:
    from qwq_local.catalog import hub_reachable, offline_mode
    from qwq_local.engine.plan import detect_gpu, ram_free_bytes
    from qwq_local.engine.system import backend_info
    from qwq_local.problems.sandbox import isolation_name

    gpu = detect_gpu()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(settings.models_dir)
    offline = offline_mode()
    return {
        "llama_cpp": backend_info(),
        "gpu": None if gpu is None else {"kind": gpu.kind, "name": gpu.name, "total": gpu.total_bytes,
                                         "free": gpu.free_bytes},
        "ram_free": ram_free_bytes(),
        "cpu_count": os.cpu_count(),
        "models_dir": str(settings.models_dir),
        "disk_free": disk.free,
        "data_dir": str(settings.data_dir),
        "hub_offline_mode": offline,
        "hub_reachable": False if offline else hub_reachable(timeout=3.0),
        "sandbox": isolation_name(),
    }
