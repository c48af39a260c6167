"""Plain reports for `qwq models`, `qwq info` and `qwq doctor` (tables on stdout, or JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import typer

from qwq_local.engine.plan import fmt_bytes


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header)] + [line(r) for r in rows])


def print_models(rows: list[Any], as_json: bool = False) -> None:
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2, default=str))
        return
    table = []
    for r in rows:
        size = "?" if r.size is None else ("~" if r.size_approx else "") + fmt_bytes(r.size)
        local = fmt_bytes(r.local_size) if r.local else "-"
        table.append([r.name + (" *" if r.default else ""), r.quant, size, local, r.source])
    typer.echo(_table(table, ["MODEL", "QUANT", "SIZE", "LOCAL", "SOURCE"]))


def info_dict(plan: Any) -> dict[str, Any]:
    info, off, rope = plan.info, plan.offload, plan.rope
    return {
        "path": str(info.path),
        "pulled": plan.pulled,
        "architecture": info.architecture,
        "name": info.name,
        "parameters": info.parameter_count,
        "quant": info.quant,
        "file_size": info.file_size,
        "shards": info.shard_count,
        "native_context": info.context_length,
        "rope": {"freq_base": info.rope_freq_base, "scaling": info.rope_scaling_type,
                 "factor": info.rope_scaling_factor, "original_context": info.rope_original_context},
        "chat_template": bool(info.chat_template),
        "n_layer": info.n_layer, "n_head": info.n_head, "n_head_kv": info.n_head_kv,
        "n_embd": info.n_embd, "head_dim": info.head_dim,
        "kv_bytes_per_token": plan.kv_bytes_per_token,
        "kv_cache": {"type_k": plan.cache.type_k, "type_v": plan.cache.type_v, "flash_attn": plan.cache.flash_attn},
        "plan": {
            "ctx": plan.n_ctx,
            "yarn": rope.yarn, "yarn_factor": rope.factor, "yarn_orig_ctx": rope.orig_ctx,
            "kv_bytes": off.kv_bytes, "gpu_layers": off.n_gpu_layers, "n_layer": off.n_layer,
            "gpu_bytes": off.gpu_bytes, "ram_bytes": off.ram_bytes,
            "fits": off.shortfall_bytes == 0, "shortfall_bytes": off.shortfall_bytes,
            "device": off.device.name if off.device else None, "summary": off.describe(),
        },
    }


def print_info(plan: Any, as_json: bool = False) -> None:
    d = info_dict(plan)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    p = d["plan"]
    yarn = f"YaRN x{p['yarn_factor']:g} over {p['yarn_orig_ctx']:,}" if p["yarn"] else "native (no YaRN)"
    where = d["path"] if d["pulled"] else f"not pulled (the catalog's facts; `qwq pull` puts it in {d['path']})"
    size = fmt_bytes(d["file_size"]) if d["pulled"] else "~" + fmt_bytes(d["file_size"])
    lines = [
        f"file          {where} ({size}{', %d shards' % d['shards'] if d['shards'] > 1 else ''})",
        f"model         {d['name'] or '?'} · {d['architecture']} · {d['parameters'] / 1e9:.2f} B params · {d['quant']}",
        f"context       native {_count(d['native_context'])} · rope base {d['rope']['freq_base']}",
        f"shape         {d['n_layer']} layers · {d['n_head']} heads ({d['n_head_kv']} KV) · head dim {d['head_dim']} · embd {d['n_embd']}",
        f"chat template {'from GGUF' if d['chat_template'] else 'none (ChatML used)'}",
        f"KV cache      {fmt_bytes(d['kv_bytes_per_token'])}/token · {fmt_bytes(p['kv_bytes'])} at ctx {p['ctx']:,} "
        f"({plan.cache.describe()})",
        f"rope plan     {yarn}",
        f"offload       {p['summary']}",
    ]
    typer.echo("\n".join(lines))


def print_doctor(report: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    ll = report["llama_cpp"]
    from qwq_local.engine.plan import device_kind

    gpus = [name.split(" ", 1)[0] for name in ll.get("devices", []) if not name.startswith("CPU")]
    backends = list(dict.fromkeys(device_kind(name) for name in gpus)) or ["cpu"]
    gpu = report["gpu"]
    lines = [
        f"llama.cpp     llama-cpp-python {ll['llama_cpp_python']} · backend {', '.join(backends).upper()} · "
        f"GPU offload {'yes' if ll['gpu_offload'] else 'no'}",
        f"              {ll['system_info']}",
        "gpu           " + (f"{gpu['kind'].upper()} {gpu['name']} · {fmt_bytes(gpu['free'])} free of "
                            f"{fmt_bytes(gpu['total'])}" if gpu else "none found"),
        f"ram           {fmt_bytes(report['ram_free'])} available · {report['cpu_count']} CPUs",
        f"models dir    {report['models_dir']} · {fmt_bytes(report['disk_free'])} free",
        f"data dir      {report['data_dir']}",
        "hub           " + ("offline mode (HF_HUB_OFFLINE)" if report["hub_offline_mode"]
                            else ("reachable" if report["hub_reachable"] else "unreachable")),
        f"code sandbox  {report.get('sandbox', 'unknown')}",
    ]
    if gpu and not ll["gpu_offload"]:
        lines.append("hint          a GPU is present but llama.cpp was built for CPU: see README, 'GPU offload'")
    if ll["amx"]:
        lines.append("hint          llama.cpp was built with AMX, which segfaults in the first decode on some Xeons: "
                     "if qwq crashes, see README, 'CPU builds'")
    typer.echo("\n".join(lines))


def print_engine(report: Any, as_json: bool = False) -> None:
    """`qwq doctor --engine`: what a remote engine serves and supports (an app.remote.EngineReport)."""
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    n = {True: "yes (K candidates in one request)", False: "no (K concurrent requests instead)",
         None: "could not tell (no completion succeeded)"}[report.n_choices]
    lines = [
        f"engine        {report.url}" + (f" · {report.kind}" if report.kind else ""),
        "models        " + (", ".join(report.models) or "none listed"),
        f"n > 1         {n}",
        "log-probs     " + (f"top {report.logprobs} per token (token confidence, self-eval)" if report.logprobs
                            else "none: self-eval and confidence scorers cannot run; use --scorer rules"),
        "prefix cache  " + (report.prefix_cache or "not reported"),
    ]
    typer.echo("\n".join(lines))


def _count(value: int | None) -> str:
    return f"{value:,}" if value else "?"
