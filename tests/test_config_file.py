"""Where config.toml lives (the XDG config dir, the old data-dir place still read), misspelt keys and variables
warned about in one line, and the environment variables each option reads shown in its help."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwq_local.cli import app, main
from qwq_local.config import load_settings, user_config_file
from qwq_local.errors import ExitCode


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home whose XDG dirs are under tmp_path, with no QWQ_USER_PATH override."""
    monkeypatch.delenv("QWQ_USER_PATH", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_config_lives_in_the_xdg_config_dir(xdg: Path) -> None:
    path = user_config_file(os.environ)
    assert path == xdg / "config" / "qwq_local" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text("temperature = 0.3\nctx = 4096\n")
    settings = load_settings(env=os.environ)
    assert settings.sampling.temperature == 0.3 and settings.ctx == 4096 and settings.warnings == ()


def test_a_config_in_the_old_place_is_still_read_with_a_note_to_move_it(xdg: Path) -> None:
    old = xdg / "data" / "qwq_local" / "config.toml"
    old.parent.mkdir(parents=True)
    old.write_text("top_k = 12\n")
    settings = load_settings(env=os.environ)
    assert settings.sampling.top_k == 12
    [warning] = settings.warnings
    assert str(old) in warning and str(xdg / "config" / "qwq_local" / "config.toml") in warning
    new = user_config_file(os.environ)  # once moved, the new place wins and nothing is said
    new.parent.mkdir(parents=True)
    new.write_text("top_k = 20\n")
    settings = load_settings(env=os.environ)
    assert settings.sampling.top_k == 20 and settings.warnings == ()


def test_misspelt_config_keys_and_variables_are_warned_about_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("temprature = 0.1\nmax_token = 9\ncolour = 'red'\ntop_p = 0.5\n")
    settings = load_settings(env={"QWQ_CONFIG": str(config), "QWQ_USER_PATH": str(tmp_path),
                                  "QWQ_TOPK": "3", "QWQ_DATA_DIR": "/x", "QWQ_DEBUG": "1"})
    assert settings.sampling.top_p == 0.5 and settings.sampling.temperature == 0.6  # the misspelt key did nothing
    assert settings.warnings == (
        f"config file {config}: unknown keys 'temprature' (did you mean 'temperature'?), 'max_token' (did you "
        "mean 'max_tokens'?), 'colour' (ignored)",
        "'QWQ_TOPK' (did you mean 'QWQ_TOP_K'?) ignored: not a setting",
    )


def test_the_cli_prints_each_warning_once_before_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("temprature = 0.1\n")
    monkeypatch.setenv("QWQ_CONFIG", str(config))
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(tmp_path / "missing.md")])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == ExitCode.FILE_NOT_FOUND
    assert err[0] == f"warning: config file {config}: unknown key 'temprature' (did you mean 'temperature'?) " \
                     "(ignored)" and len(err) == 2 and err[1].startswith("error: ")


def test_help_shows_the_environment_variable_of_each_setting() -> None:
    for command in ("solve", "chat"):
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        for variable in ("QWQ_MODEL", "QWQ_TEMPERATURE", "QWQ_MAX_TOKENS", "QWQ_CTX", "QWQ_PRESENCE_PENALTY",
                         "QWQ_SYSTEM", "QWQ_ENGINE"):
            assert f"env var: {variable}]" in text, (command, variable)


def test_an_option_reads_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QWQ_TOP_P", "7")  # out of range: the error names the setting, as --top-p 7 would
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(tmp_path / "missing.md")])
    assert exc.value.code == ExitCode.USAGE and "--top-p must be in (0, 1]" in capsys.readouterr().err


def test_a_bad_sampling_setting_stops_only_the_commands_that_sample(xdg: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    env = {**os.environ, "QWQ_TEMPERATURE": "abc", "QWQ_TOP_P": "7"}
    with pytest.raises(Exception, match="'temperature' must be a number"):
        load_settings(env=env)
    quiet = load_settings(env=env, samples=False)
    assert quiet.sampling.temperature == 0.6 and quiet.sampling.top_p == 0.95  # the defaults
    assert len(quiet.warnings) == 2 and all("ignored here" in w for w in quiet.warnings)
    monkeypatch.setenv("QWQ_TEMPERATURE", "abc")
    monkeypatch.setenv("QWQ_MODELS_DIR", str(xdg / "models"))
    with pytest.raises(SystemExit) as exc:
        main(["models", "--json"])
    assert exc.value.code == 0 and "'temperature' must be a number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(xdg / "none.md")])
    assert exc.value.code == ExitCode.USAGE and "QWQ_TEMPERATURE" in capsys.readouterr().err  # solve samples
