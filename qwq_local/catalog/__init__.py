"""Model catalog, downloads (the only place importing huggingface_hub) and GGUF metadata."""

from qwq_local.catalog.download import pull
from qwq_local.catalog.gguf_info import GGUFInfo, read_gguf_info
from qwq_local.catalog.hub_env import HubSettings, hub_reachable, offline_mode
from qwq_local.catalog.local import (
    ModelRow,
    ResolvedModel,
    disk_bytes,
    download_size,
    list_models,
    pulled_files,
    recorded_info,
    remove_files,
    resolve,
)
from qwq_local.catalog.spec import Catalog, FileSpec, HeadSpec, ModelSpec, WheelSpec, load_catalog

__all__ = [
    "Catalog",
    "FileSpec",
    "GGUFInfo",
    "HeadSpec",
    "HubSettings",
    "ModelRow",
    "ModelSpec",
    "ResolvedModel",
    "WheelSpec",
    "disk_bytes",
    "download_size",
    "hub_reachable",
    "list_models",
    "load_catalog",
    "offline_mode",
    "pull",
    "pulled_files",
    "read_gguf_info",
    "recorded_info",
    "remove_files",
    "resolve",
]
