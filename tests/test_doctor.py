"""`qwq doctor`: the llama.cpp build, memory, disk and hub report, and its hints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwq_local.cli import main
from qwq_local.problems import sandbox
from qwq_local.render.reports import print_doctor


def _report(amx: bool, gpu_offload: bool = False) -> dict[str, Any]:
    return {
        "llama_cpp": {"llama_cpp_python": "0.3.36", "gpu_offload": gpu_offload, "cuda": False, "metal": False,
                      "mmap": True, "amx": amx, "system_info": "CPU : AVX2 = 1"},
        "gpu": None, "ram_free": 8 << 30, "cpu_count": 2, "models_dir": "/m", "disk_free": 50 << 30,
        "data_dir": "/d", "hub_offline_mode": True, "hub_reachable": False,
    }


def test_doctor_reports_the_real_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--json", "--models-dir", str(tmp_path / "models")])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    build = report["llama_cpp"]
    assert build["llama_cpp_python"].count(".") == 2 and "CPU" in build["system_info"]
    assert build["amx"] == ("AMX_INT8 = 1" in build["system_info"])
    assert report["hub_offline_mode"] and not report["hub_reachable"] and report["disk_free"] > 0
    assert report["sandbox"] == sandbox.isolation_name()
    assert report["sandbox"].startswith("bubblewrap") == (sandbox._bwrap() is not None)


def test_an_amx_build_gets_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    print_doctor(_report(amx=True))
    out = capsys.readouterr().out
    assert "AMX" in out and "README, 'CPU builds'" in out and "offline mode" in out
    print_doctor(_report(amx=False))
    assert "AMX" not in capsys.readouterr().out
    print_doctor({**_report(amx=False), "sandbox": "bubblewrap (empty root)"})
    assert "code sandbox  bubblewrap (empty root)" in capsys.readouterr().out
