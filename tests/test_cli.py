"""The CLI: one-line errors with distinct exit codes, and `qwq solve` on the real tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_local.cli import main
from qwq_local.errors import ExitCode

NATALIA = Path(__file__).parent.parent / "examples" / "natalia.md"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("qwq 0.")


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda d: str(d / "missing.md"), ExitCode.FILE_NOT_FOUND, "no such file"),
        (lambda d: str(d), ExitCode.IS_A_DIRECTORY, "directory"),
        (lambda d: (d / "empty.md").write_text("  \n") and str(d / "empty.md"), ExitCode.EMPTY_INPUT, "empty"),
    ],
)
def test_bad_problem_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, code, words) -> None:
    exit_code, out, err = run_cli(["solve", make(tmp_path), "--model", "qwen2.5-coder-0.5b"], capsys)
    assert exit_code == code
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_not_gguf_and_truncated(tmp_path: Path, capsys: pytest.CaptureFixture[str], qwen_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all" * 10)
    code, _, err = run_cli(["info", str(bad)], capsys)
    assert code == ExitCode.NOT_GGUF and "GGUF" in err
    cut = tmp_path / "cut.gguf"
    with open(qwen_path, "rb") as src:
        cut.write_bytes(src.read(2_000_000))
    code, _, err = run_cli(["solve", str(NATALIA), "--model", str(cut)], capsys)
    assert code == ExitCode.CORRUPT_MODEL and err.startswith("error:")


def test_unknown_model_and_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(["solve", str(NATALIA), "--model", "no-such-model"], capsys)
    assert code == ExitCode.UNKNOWN_MODEL and "unknown model" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(["solve", str(NATALIA), "--model", "qwq-32b", "--models-dir", str(tmp_path)], capsys)
    assert code == ExitCode.NOT_PULLED_OFFLINE and "not pulled" in err


def test_context_too_large_even_with_yarn(capsys: pytest.CaptureFixture[str], qwen_path: Path) -> None:
    code, _, err = run_cli(["info", str(qwen_path), "--ctx", "200000"], capsys)
    assert code == ExitCode.CONTEXT_TOO_LARGE and "YaRN" in err


def test_not_enough_memory(capsys: pytest.CaptureFixture[str], qwen_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qwq_local.app.runtime.ram_free_bytes", lambda: 100 * 1024**2)
    code, _, err = run_cli(["solve", str(NATALIA), "--model", str(qwen_path)], capsys)
    assert code == ExitCode.OUT_OF_MEMORY and "not enough memory" in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(tmp_path: Path, where: str) -> None:
    args = ["solve", str(tmp_path / "x.md")]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    proc = subprocess.run([sys.executable, "-m", "qwq_local", *args], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "no such file" in proc.stderr


@pytest.mark.parametrize(("args", "last_line"), [(["models", "--bogus"], "Error: No such option: --bogus"),
                                                 (["solve"], "Error: Missing argument 'FILE'."),
                                                 (["no-such-command"], "Error: No such command 'no-such-command'.")])
def test_bad_command_line_is_a_usage_error(args: list[str], last_line: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == ExitCode.USAGE and "Traceback" not in err
    assert err.startswith("Usage: qwq") and err.rstrip().splitlines()[-1] == last_line


def test_info_shows_plan(capsys: pytest.CaptureFixture[str], qwen_path: Path) -> None:
    code, out, _ = run_cli(["info", str(qwen_path), "--ctx", "65536", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["architecture"] == "qwen2" and data["n_layer"] == 24
    assert data["plan"]["yarn"] is True and data["plan"]["yarn_factor"] == 2
    assert data["kv_bytes_per_token"] == 2 * 24 * 2 * 64 * 2


@pytest.mark.model
def test_solve_gsm8k_problem_at_temperature_zero(capsys: pytest.CaptureFixture[str], qwen_path: Path) -> None:
    """GSM8K's first training problem: qwen2.5-coder-0.5b answers 72 greedily."""
    code, out, _ = run_cli(["solve", str(NATALIA), "--model", str(qwen_path), "--temperature", "0",
                            "--max-tokens", "400", "--ctx", "2048", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["final_answer"] == "72"
    assert data["strategy"] == "direct" and data["tokens"]["answer"] > 0 and data["tokens_per_second"] > 0
    assert "\\boxed{72}" in data["answer"]


@pytest.mark.model
def test_solve_astar_shows_and_traces_the_tree(capsys: pytest.CaptureFixture[str], qwen_path: Path,
                                               tmp_path: Path) -> None:
    trace = tmp_path / "tree.json"
    code, out, err = run_cli(["solve", str(NATALIA), "--model", str(qwen_path), "--strategy", "astar",
                              "--candidates", "2", "--trajectories", "1", "--beam", "4", "--max-expansions", "4",
                              "--max-tokens", "200", "--ctx", "2048", "--seed", "1", "--scorer", "rules",
                              "--show-tree", "--trace", str(trace)], capsys)
    assert code == 0, err
    assert "★ question" in out and "chosen path: 0 → " in out and "g=" in out
    data = json.loads(trace.read_text())
    assert 1 <= data["result"]["expansions"] <= 4
    assert {n["id"] for n in data["tree"] if n["chosen"]} == set(data["result"]["chosen_path"])


@pytest.mark.parametrize(("extra", "words"), [
    (["--strategy", "astar", "--scorer", "magic"], "unknown scorer 'magic'"),
    (["--strategy", "astar", "--scorer", "rules:x"], "must be a number"),
    (["--strategy", "sc", "--scorer", "rules"], "uses no scorer"),
    (["--show-tree"], "need a search strategy"),
    (["--strategy", "astar", "--trace", "/no/such/dir/tree.json"], "not a file in an existing directory"),
])
def test_search_flags_are_checked_before_the_model_loads(capsys: pytest.CaptureFixture[str], qwen_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, extra: list[str],
                                                         words: str) -> None:
    from qwq_local.app import runtime

    monkeypatch.setattr(runtime, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code, _, err = run_cli(["solve", str(NATALIA), "--model", str(qwen_path), *extra], capsys)
    assert code == ExitCode.USAGE and words in err and err.count("\n") == 1


def test_other_bad_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["bench", "engine", "--k", "1,x"], capsys)
    assert code == ExitCode.USAGE and "sibling counts" in err
    code, _, err = run_cli(["chat", "--model", "qwen2.5-coder-0.5b", "--think-budget", "0"], capsys)
    assert code == ExitCode.USAGE and "--think-budget" in err


def test_bad_search_option_is_a_usage_error(capsys: pytest.CaptureFixture[str], qwen_path: Path) -> None:
    code, _, err = run_cli(["solve", str(NATALIA), "--model", str(qwen_path), "--strategy", "astar",
                            "--candidates", "0"], capsys)
    assert code == ExitCode.USAGE and "candidates" in err and err.count("\n") == 1


@pytest.mark.model
def test_astar_scores_by_confidence_and_the_shipped_head_when_named(capsys: pytest.CaptureFixture[str],
                                                                   qwen_path: Path) -> None:
    """A* scores by token confidence unless told otherwise; the catalog's Q-value head when it is named."""
    base = ["solve", str(NATALIA), "--model", "qwen2.5-coder-0.5b", "--strategy", "astar", "--trajectories", "2",
            "--max-tokens", "200", "--ctx", "2048", "--seed", "2", "--json"]
    code, out, err = run_cli(base, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["scorer"] == "confidence" and len(data["terminal_answers"]) >= 2
    code, out, err = run_cli(base + ["--scorer", "qhead", "--max-depth", "1", "--trajectories", "1"], capsys)
    assert code == 0, err
    assert json.loads(out)["scorer"] == "qhead"
    code, out, _ = run_cli(["head", "info", str(Path(__file__).parent.parent / "models" /
                                               "qwen2.5-coder-0.5b.qhead.gguf"), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["architecture"] == "qwen2" and info["n_embd"] == 896 and info["n_states"] > 0
    assert info["pooling"] == "mean_of_step"  # the shipped head reads a step's mean state (README)


@pytest.mark.model
def test_a_mean_pooled_head_values_each_live_step_by_its_mean_state(capsys: pytest.CaptureFixture[str],
                                                                    qwen_path: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from qwq_local.value.qhead import QHead

    head = _head_file(tmp_path / "mean.gguf", pooling="mean_of_step")
    seen: list[tuple[object, object]] = []
    score = QHead.score

    def spy(self: QHead, question: str, steps: list[str], candidate: object) -> float:
        seen.append((candidate.hidden, candidate.hidden_mean))  # type: ignore[attr-defined]
        return score(self, question, steps, candidate)  # type: ignore[arg-type]

    monkeypatch.setattr(QHead, "score", spy)
    code, out, err = run_cli(["solve", str(NATALIA), "--model", str(qwen_path), "--strategy", "astar", "--scorer",
                              "qhead", "--head", str(head), "--max-depth", "1", "--trajectories", "1",
                              "--max-tokens", "120", "--ctx", "2048", "--seed", "2", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["scorer"] == "qhead" and seen
    for last, mean in seen:  # every step valued had its mean state, and it is not its last token's
        assert mean is not None and np.isfinite(mean).all() and np.asarray(mean).shape == (896,)
        assert not np.allclose(mean, last, atol=0.05)


def test_a_full_disk_is_one_line_and_its_own_exit_code(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import errno

    def write_fails(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "labels.jsonl"))

    monkeypatch.setattr("qwq_local.cli.head.print_head_info", write_fails)
    code, _, err = run_cli(["head", "info", str(tmp_path / "h.gguf")], capsys)
    assert code == ExitCode.DISK_FULL and err.count("\n") == 1
    assert "disk full writing" in err and "labels.jsonl" in err and "Traceback" not in err


def _head_file(path: Path, **meta: object) -> Path:
    import numpy as np

    from qwq_local.value.qhead import QHeadMeta, QHeadWeights, write_head

    fields: dict[str, object] = {"architecture": "qwen2", "n_embd": 896, "model_sha256": "", "step_delimiter": "\n\n",
                                 "training_data": "test", "n_problems": 1, "n_states": 2, "metrics": {},
                                 "created": "2026-11-24T00:00:00+00:00"}
    fields.update(meta)
    n = int(fields["n_embd"])  # type: ignore[arg-type]
    return write_head(path, QHeadWeights(mean=np.zeros(n), std=np.ones(n), w=np.zeros(n), b=[0.0]),
                      QHeadMeta(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(("model", "meta", "code_wanted", "words"), [
    ("path", None, ExitCode.USAGE, "no such file"),
    ("path", {"architecture": "llama"}, ExitCode.HEAD_MISMATCH, "llama"),
    ("path", {"n_embd": 64}, ExitCode.HEAD_MISMATCH, "64"),
    ("catalog", {"model_sha256": "0" * 64}, ExitCode.HEAD_MISMATCH, "sha256"),
])
def test_a_head_that_does_not_fit_is_refused_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], qwen_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    model: str, meta: dict[str, object] | None, code_wanted: ExitCode, words: str,
) -> None:
    from qwq_local.app import runtime

    monkeypatch.setattr(runtime, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    head = tmp_path / "h.gguf" if meta is None else _head_file(tmp_path / "h.gguf", **meta)
    name = str(qwen_path) if model == "path" else "qwen2.5-coder-0.5b"
    for command in (["solve", str(NATALIA), "--strategy", "astar"], ["chat"]):
        code, _, err = run_cli([*command, "--model", name, "--head", str(head)], capsys)
        assert code == code_wanted and words in err and err.count("\n") == 1, err


def test_a_head_is_taken_from_the_environment_too(capsys: pytest.CaptureFixture[str], qwen_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from qwq_local.app import runtime

    monkeypatch.setattr(runtime, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setenv("QWQ_HEAD", str(tmp_path / "nowhere.gguf"))
    code, _, err = run_cli(["solve", str(NATALIA), "--model", str(qwen_path), "--strategy", "bon"], capsys)
    assert code == ExitCode.USAGE and "nowhere.gguf: no such file" in err


def test_help_has_plain_labels_sampling_defaults_and_completion(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    code, out, _ = run_cli(["solve", "--help"], capsys)
    options = out.split("Options")[1]
    assert code == 0 and "<bool>" not in options and "<int>" not in options and "<float>" not in options
    for flag, default in (("--temperature", "0.6"), ("--top-p", "0.95"), ("--top-k", "40"), ("--min-p", "0"),
                          ("--max-tokens", "8192"), ("--presence-penalty", "0, off")):
        line = next(row for row in options.splitlines() if flag + " " in row)
        assert f"[default: {default}]" in line, line
    code, out, _ = run_cli(["chat", "--help"], capsys)
    assert "--top-p" in out and "--top-k" in out and "--system" in out and "<bool>" not in out
    for command in (["solve"], ["bench", "compare"], ["history", "show"]):  # arguments by name, no type column
        code, out, _ = run_cli([*command, "--help"], capsys)
        arguments = out.split("Arguments")[1].split("Options")[0]
        assert code == 0 and "<" not in arguments and any(w in arguments for w in ("FILE", "RESULTS", "CONVERSATION"))
    code, out, _ = run_cli(["--help"], capsys)
    assert "--install-completion" in out and "--show-completion" in out


def test_a_large_download_is_asked_for_in_a_terminal_and_refused_in_a_script(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import typer

    from qwq_local import catalog

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("QWQ_YES", raising=False)
    pulls: list[str] = []
    monkeypatch.setattr(catalog, "pull", lambda model, *a, **k: pulls.append(model) or pytest.fail("pulled"))
    args = ["solve", str(NATALIA), "--model", "qwq-32b", "--models-dir", str(tmp_path)]
    code, _, err = run_cli(args, capsys)  # a script (stdin is not a terminal): refused, with the way out
    assert code == ExitCode.DOWNLOAD_NOT_CONFIRMED and "qwq pull qwq-32b" in err and "--yes" in err
    assert "GiB" in err and err.count("\n") == 1 and pulls == []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    asked: list[str] = []
    monkeypatch.setattr(typer, "confirm", lambda text, **k: asked.append(text) or False)
    code, _, err = run_cli(args, capsys)  # a terminal: asked, and "no" downloads nothing
    assert code == ExitCode.DOWNLOAD_NOT_CONFIRMED and "not downloaded" in err and pulls == []
    assert len(asked) == 1 and "qwq-32b" in asked[0] and str(tmp_path) in asked[0]
    from qwq_local.cli.root import confirm_download
    from qwq_local.config import load_settings

    confirm_download(load_settings({"model": "smollm2-135m", "models_dir": tmp_path}, env={}), False)
    assert len(asked) == 1  # a small model (135M: ~100 MiB) is fetched without asking
    code, _, err = run_cli([*args, "--chat-template", str(tmp_path / "missing.jinja")], capsys)
    assert code == ExitCode.FILE_NOT_FOUND and "--chat-template" in err and len(asked) == 1  # said before asking
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    code, _, err = run_cli(["solve", str(NATALIA), "--model", "hf:someone/repo/x-Q8_0.gguf",
                            "--models-dir", str(tmp_path)], capsys)  # a hub file of unknown size: asked for too
    assert code == ExitCode.DOWNLOAD_NOT_CONFIRMED and "size unknown" in err and pulls == []
    monkeypatch.setattr(catalog, "pull", lambda model, *a, **k: pulls.append(model))  # --yes: straight to the pull
    code, _, _ = run_cli([*args, "--yes"], capsys)
    assert pulls == ["qwq-32b"] and len(asked) == 1


def test_ctrl_c_while_the_cli_is_imported_exits_130_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.abc
    import sys

    from qwq_local.__main__ import run

    class Pressed(importlib.abc.MetaPathFinder):  # Ctrl-C arrives while the CLI's modules load
        def find_spec(self, name: str, *args: object) -> None:
            if name == "qwq_local.cli":
                raise KeyboardInterrupt

    for name in [m for m in sys.modules if m == "qwq_local.cli" or m.startswith("qwq_local.cli.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Pressed(), *sys.meta_path])
    with pytest.raises(SystemExit) as exc:
        run()
    assert exc.value.code == ExitCode.INTERRUPTED and capsys.readouterr().err == "interrupted\n"
