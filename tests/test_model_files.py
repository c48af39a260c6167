"""`qwq rm` (a pulled model's files go, asked first) and `qwq info` before the pull (the catalog's GGUF facts)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from qwq_local.catalog import load_catalog, read_gguf_info, recorded_info
from qwq_local.errors import ExitCode
from tests.test_cli import run_cli

GiB = 1024**3
CATALOG = Path(__file__).parent.parent / "models" / "catalog.toml"


@pytest.fixture(autouse=True)
def this_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """This checkout's catalog, whichever copy of qwq_local is installed."""
    monkeypatch.setenv("QWQ_CATALOG", str(CATALOG))


def place(model_file: Path, models_dir: Path, family: str) -> Path:
    """A pulled model as `qwq pull` leaves it (a hard link where it can, so no 100 MB copy)."""
    dest = models_dir / family / model_file.name
    dest.parent.mkdir(parents=True)
    try:
        os.link(model_file, dest)
    except OSError:
        shutil.copyfile(model_file, dest)
    return dest


def test_rm_removes_a_pulled_model_and_its_partial_files(smollm_path: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    models_dir = tmp_path / "models"
    dest = place(smollm_path, models_dir, "smollm2-135m")
    dest.with_name(dest.name + ".part").write_bytes(b"x")
    code, out, _ = run_cli(["rm", "smollm2-135m", "--yes", "--models-dir", str(models_dir)], capsys)
    assert code == 0 and out.startswith("removed smollm2-135m (93.8 MiB)")
    assert not (models_dir / "smollm2-135m").exists() and smollm_path.is_file()  # the test cache keeps its copy
    code, out, _ = run_cli(["models", "--json", "--models-dir", str(models_dir)], capsys)
    assert not next(r for r in json.loads(out) if r["name"] == "smollm2-135m:q4_1")["local"]


def test_rm_asks_first(smollm_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    models_dir = tmp_path / "models"
    dest = place(smollm_path, models_dir, "smollm2-135m")
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, _, err = run_cli(["rm", "smollm2-135m", "--models-dir", str(models_dir)], capsys)
    assert code == 0 and "Remove smollm2-135m" in err and str(dest) in err and "nothing removed" in err
    assert dest.is_file()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out, _ = run_cli(["rm", "smollm2-135m", "--models-dir", str(models_dir)], capsys)
    assert code == 0 and "removed" in out and not dest.exists()


def test_rm_of_what_is_not_pulled_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["rm", "qwq-32b", "--yes", "--models-dir", str(tmp_path)], capsys)
    assert code == ExitCode.NOT_PULLED_OFFLINE and "qwq-32b is not pulled" in err and err.count("\n") == 1
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    code, _, err = run_cli(["rm", str(tmp_path / "mine.gguf"), "--yes"], capsys)
    assert code == ExitCode.USAGE and (tmp_path / "mine.gguf").is_file()


@pytest.mark.parametrize("family", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_the_catalog_records_the_gguf_facts_of_the_file(family: str, qwen_path: Path, smollm_path: Path) -> None:
    real = read_gguf_info(smollm_path if family.startswith("smollm") else qwen_path)
    recorded = recorded_info(family, Path("/nowhere"))
    assert recorded is not None
    facts = recorded[1]
    for field in ("architecture", "parameter_count", "n_layer", "n_head", "n_head_kv", "n_embd", "head_dim",
                  "value_dim", "rope_freq_base", "context_length", "file_size"):
        assert getattr(facts, field) == getattr(real, field), field
    assert facts.kv_bytes_per_token() == real.kv_bytes_per_token()


def test_info_of_qwq_32b_before_the_download(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qwq_local.app.runtime.ram_free_bytes", lambda: 64 * GiB)
    monkeypatch.setattr("qwq_local.app.runtime.detect_gpu", lambda: None)
    code, out, err = run_cli(["info", "qwq-32b", "--ctx", "32768", "--json", "--models-dir", str(tmp_path)], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["pulled"] is False and data["n_layer"] == 64 and data["n_head_kv"] == 8
    assert data["kv_bytes_per_token"] == 64 * 8 * 256 * 2  # 256 KiB: 64 layers x 8 KV heads x (K+V 128) x f16
    assert data["plan"]["kv_bytes"] == 8 * GiB and data["plan"]["fits"] and not data["plan"]["yarn"]
    assert not any(tmp_path.iterdir())  # nothing downloaded
    monkeypatch.setattr("qwq_local.app.runtime.ram_free_bytes", lambda: 16 * GiB)
    code, out, _ = run_cli(["info", "qwq-32b", "--ctx", "65536", "--models-dir", str(tmp_path)], capsys)
    assert code == 0 and "not pulled" in out and "YaRN x2" in out and "does not fit here" in out
    code, _, err = run_cli(["info", "hf:acme/x/y.gguf", "--models-dir", str(tmp_path)], capsys)
    assert code == ExitCode.NOT_PULLED_OFFLINE and "not pulled" in err


def test_every_catalog_model_records_its_facts() -> None:
    assert all(spec.gguf is not None for spec in load_catalog(CATALOG).specs())
