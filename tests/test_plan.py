"""Offload planning, YaRN choice and settings layering: pure functions, no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwq_local.config import load_settings
from qwq_local.engine.plan import (
    BackendDevice,
    Device,
    detect_gpu,
    gpus_from_backend,
    parse_nvidia_smi,
    plan_offload,
    plan_rope,
    ram_free_bytes,
)
from qwq_local.errors import ContextTooLargeError, OutOfMemoryError, UsageError

GiB = 1024**3


def test_yarn_only_beyond_native_with_smallest_factor() -> None:
    assert not plan_rope(32_768, 32_768).yarn
    assert not plan_rope(8_192, 32_768).yarn
    rope = plan_rope(40_000, 32_768, 4)
    assert rope.yarn and rope.factor == 2 and rope.orig_ctx == 32_768 and rope.freq_scale == 0.5
    assert plan_rope(131_072, 32_768, 4).factor == 4
    with pytest.raises(ContextTooLargeError):
        plan_rope(131_073, 32_768, 4)


def test_yarn_for_a_prompt_past_the_cards_threshold() -> None:
    rope = plan_rope(16_384, 32_768, 4, prompt_tokens=8_193, yarn_from=8_192)
    assert rope.yarn and rope.factor == 4 and rope.orig_ctx == 32_768  # the card's static factor 4
    assert not plan_rope(16_384, 32_768, 4, prompt_tokens=8_192, yarn_from=8_192).yarn
    assert not plan_rope(16_384, 32_768, 4, prompt_tokens=20_000).yarn  # a model whose card does not ask
    assert not plan_rope(16_384, 32_768, 1, prompt_tokens=20_000, yarn_from=8_192).yarn  # nor one without YaRN
    assert plan_rope(65_536, 32_768, 4, prompt_tokens=20_000, yarn_from=8_192).factor == 2


def gpu(free_gib: float) -> Device:
    return Device("cuda", "test", int(24 * GiB), int(free_gib * GiB))


def test_full_offload_when_model_and_kv_fit() -> None:
    plan = plan_offload(model_bytes=20 * GiB, n_layer=64, kv_bytes=2 * GiB, device=gpu(23),
                        ram_free_bytes=32 * GiB)
    assert plan.full_offload and plan.llama_n_gpu_layers == -1 and plan.ram_bytes == 0


def test_partial_offload_takes_the_most_layers_that_fit() -> None:
    plan = plan_offload(model_bytes=20 * GiB, n_layer=64, kv_bytes=4 * GiB, device=gpu(12),
                        ram_free_bytes=32 * GiB)
    per_layer = 20 * GiB / 65 + 4 * GiB / 64
    assert plan.n_gpu_layers == int((12 * GiB - 512 * 1024**2) // per_layer)
    assert 0 < plan.n_gpu_layers < 64 and plan.gpu_bytes <= 12 * GiB


def test_cpu_only_and_overrides() -> None:
    assert plan_offload(model_bytes=GiB, n_layer=24, kv_bytes=GiB, device=None, ram_free_bytes=8 * GiB).n_gpu_layers == 0
    assert plan_offload(model_bytes=GiB, n_layer=24, kv_bytes=GiB, device=gpu(1), ram_free_bytes=8 * GiB,
                        gpu_layers="all").full_offload
    assert plan_offload(model_bytes=GiB, n_layer=24, kv_bytes=GiB, device=gpu(20), ram_free_bytes=8 * GiB,
                        gpu_layers="7").n_gpu_layers == 7
    with pytest.raises(UsageError):
        plan_offload(model_bytes=GiB, n_layer=24, kv_bytes=GiB, device=None, ram_free_bytes=8 * GiB,
                     gpu_layers="many")


def test_refuses_what_fits_nowhere() -> None:
    with pytest.raises(OutOfMemoryError, match="not enough memory"):
        plan_offload(model_bytes=20 * GiB, n_layer=64, kv_bytes=8 * GiB, device=gpu(8), ram_free_bytes=16 * GiB)
    metal = Device("metal", "Apple silicon", 10 * GiB, 10 * GiB)
    with pytest.raises(OutOfMemoryError):  # unified memory is not counted twice
        plan_offload(model_bytes=14 * GiB, n_layer=64, kv_bytes=GiB, device=metal, ram_free_bytes=14 * GiB)


def test_nvidia_smi_parsing() -> None:
    dev = parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564, 23000\n")
    assert dev is not None and dev.free_bytes == 23000 * 1024**2 and dev.name.endswith("4090")
    assert parse_nvidia_smi("garbage") is None


def test_settings_layering(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('temperature = 0.3\nctx = 4096\nmodel = "qwen2.5-coder-0.5b"\n')
    s = load_settings({"ctx": 2048}, env={"QWQ_TEMPERATURE": "0.2", "QWQ_USER_PATH": str(tmp_path)})
    assert s.ctx == 2048 and s.sampling.temperature == 0.2 and s.model == "qwen2.5-coder-0.5b"
    assert s.sampling.top_p == 0.95 and s.sampling.top_k == 40 and s.sampling.min_p == 0.0
    with pytest.raises(UsageError):
        load_settings({"top_p": 0}, env={"QWQ_USER_PATH": str(tmp_path)})


def test_kv_budget_takes_tokens_or_a_size() -> None:
    from qwq_local.config import load_settings, parse_kv_budget
    from qwq_local.errors import UsageError

    assert parse_kv_budget("4096") == (4096, False)
    assert parse_kv_budget("512MiB") == (512 << 20, True)
    assert parse_kv_budget("1.5GiB") == (int(1.5 * (1 << 30)), True)
    assert parse_kv_budget("0") == (0, False)
    for bad in ("lots", "12 parsecs", "1.5", "-3", "4k"):
        with pytest.raises(UsageError):
            parse_kv_budget(bad)
    with pytest.raises(UsageError):
        load_settings({"kv_budget": "huge"}, env={})
    assert load_settings({"kv_budget": "2GiB"}, env={}).kv_budget == "2GiB"


@pytest.mark.model
def test_kv_budget_in_bytes_becomes_tokens(qwen_path: Path) -> None:
    from qwq_local.app import runtime
    from qwq_local.config import load_settings
    from qwq_local.errors import UsageError

    settings = load_settings({"kv_budget": "12MiB", "model": str(qwen_path)}, env={})
    plan = runtime.plan_model(runtime.locate(str(qwen_path), settings), settings, gpu_supported=False)
    assert runtime.kv_budget_tokens(plan, settings) == (12 << 20) // plan.info.kv_bytes_per_token() == 1024
    with pytest.raises(UsageError):
        runtime.kv_budget_tokens(plan, load_settings({"kv_budget": "1KiB"}, env={}))
    assert runtime.kv_budget_tokens(plan, load_settings({}, env={})) is None


CPU = BackendDevice("CPU", "Intel(R) Xeon(R)", 0, 20 * GiB, 24 * GiB)


@pytest.mark.parametrize(("name", "kind"), [("Vulkan0", "vulkan"), ("ROCm0", "rocm"), ("SYCL0", "sycl"),
                                            ("CUDA0", "cuda"), ("MTL0", "metal")])
def test_every_gpu_backend_llama_cpp_reports_is_offloaded_to(name: str, kind: str) -> None:
    reported = [CPU, BackendDevice(name, "Some GPU", 1, 23 * GiB, 24 * GiB)]
    device = detect_gpu(lambda: reported)
    assert device is not None and device.kind == kind and device.free_bytes == 23 * GiB
    plan = plan_offload(model_bytes=18 * GiB, n_layer=64, kv_bytes=2 * GiB, device=device, ram_free_bytes=32 * GiB)
    assert plan.full_offload and kind.upper() in plan.describe()


def test_all_gpus_are_counted_and_an_integrated_one_shares_the_ram() -> None:
    two = gpus_from_backend([CPU, BackendDevice("CUDA0", "RTX 3090", 1, 22 * GiB, 24 * GiB),
                             BackendDevice("CUDA1", "RTX 3090", 1, 20 * GiB, 24 * GiB)])
    assert two is not None and two.count == 2 and two.free_bytes == 42 * GiB and two.total_bytes == 48 * GiB
    assert plan_offload(model_bytes=36 * GiB, n_layer=64, kv_bytes=4 * GiB, device=two,
                        ram_free_bytes=8 * GiB).full_offload  # more than either card holds alone
    igpu = gpus_from_backend([CPU, BackendDevice("Vulkan0", "Radeon 780M", 2, 12 * GiB, 16 * GiB)])
    assert igpu is not None and igpu.unified
    with pytest.raises(OutOfMemoryError):  # its memory is the RAM: not counted twice
        plan_offload(model_bytes=14 * GiB, n_layer=64, kv_bytes=GiB, device=igpu, ram_free_bytes=14 * GiB)
    assert gpus_from_backend([CPU]) is None


def test_the_real_device_list_and_ram() -> None:
    import psutil

    from qwq_local.engine.system import backend_devices

    devices = backend_devices()  # this build's own answer, through llama.cpp
    assert any(d.type == 0 and d.name == "CPU" for d in devices)
    assert 0 < ram_free_bytes() <= psutil.virtual_memory().total


def test_kv_cache_types_are_counted_in_the_plan() -> None:
    from qwq_local.engine.plan import KVCache

    assert KVCache.parse("f16", "f16", False).element_bytes == (2.0, 2.0)
    assert KVCache.parse("q8_0", "q8_0", True).element_bytes == (34 / 32, 34 / 32)
    assert KVCache.parse("q4_0", "f16", False).describe() == "K q4_0, V f16"
    with pytest.raises(UsageError, match="needs --flash-attn"):
        KVCache.parse("f16", "q8_0", False)
    with pytest.raises(UsageError, match="f16 | q8_0 | q4_0"):
        KVCache.parse("q5_1", "f16", False)


def test_quantised_kv_cache_reaches_llama_cpp(smollm_path: Path) -> None:
    from qwq_local.engine.model import LoadedModel, LoadOptions
    from qwq_local.engine.plan import KVCache

    def state_bytes(cache: KVCache) -> int:
        model = LoadedModel(smollm_path, LoadOptions(n_ctx=256, cache=cache))
        try:
            model.llama.eval(model.tokenize("The quick brown fox jumps over the lazy dog. " * 8))
            return len(model.llama.save_state().llama_state)  # holds the KV cells of the evaluated tokens
        finally:
            model.close()

    f16 = state_bytes(KVCache())
    q8 = state_bytes(KVCache("q8_0", "q8_0", flash_attn=True))
    q4 = state_bytes(KVCache("q4_0", "q4_0", flash_attn=True))
    assert q4 < q8 < f16


@pytest.mark.parametrize(("gpu_gib", "cache", "ram_gib", "expected"), [
    (24, ("f16", "f16", False), 16, 16384),  # a 24 GB card: 32k of f16 KV (8 GiB) would push layers off it
    (24, ("q8_0", "q8_0", True), 16, 32768),  # q8_0 KV halves it: the card's 32,768 fit
    (None, ("f16", "f16", False), 64, 32768),  # CPU only, RAM enough
    (None, ("f16", "f16", False), 22, 8192),  # CPU only, barely room for 8k: the plain default
])
def test_qwq_gets_the_largest_context_the_memory_plan_fits_without_ctx(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu_gib: int | None, cache: tuple[str, str, bool],
        ram_gib: int, expected: int) -> None:
    from qwq_local import catalog
    from qwq_local.app import runtime

    device = None if gpu_gib is None else Device("cuda", "RTX 4090", gpu_gib * GiB, gpu_gib * GiB)
    monkeypatch.setattr(runtime, "detect_gpu", lambda: device)
    monkeypatch.setattr(runtime, "ram_free_bytes", lambda: ram_gib * GiB)
    k, v, flash = cache
    flags = {"models_dir": tmp_path, "cache_type_k": k, "cache_type_v": v, "flash_attn": flash}
    settings = load_settings(flags, env={})
    resolved, info = catalog.recorded_info("qwq-32b", tmp_path)
    plan = runtime.plan_model(resolved, settings, info=info, gpu_supported=gpu_gib is not None, refuse=False)
    assert plan.n_ctx == expected and not plan.rope.yarn
    assert runtime.sized_to(plan, settings).sampling.max_tokens == max(8192, expected)  # the reply may fill it
    given = load_settings({**flags, "ctx": 8192, "max_tokens": 1000}, env={})  # --ctx and --max-tokens win
    fixed = runtime.plan_model(resolved, given, info=info, gpu_supported=gpu_gib is not None, refuse=False)
    assert fixed.n_ctx == 8192 and runtime.sized_to(fixed, given).sampling.max_tokens == 1000
