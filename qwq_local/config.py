"""Frozen settings: defaults < config file < QWQ_* environment < command-line flags."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

import platformdirs

from qwq_local.errors import ExitCode, QwqError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP = "qwq_local"


@dataclass(frozen=True)
class Sampling:
    """QwQ's recommended sampling; temperature 0 means greedy."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 8192
    presence_penalty: float = 0.0  # QwQ's card: 0-2 against endless repetition; off by default
    repeat_penalty: float = 1.0  # llama.cpp's repetition penalty; 1 is off

    def validate(self) -> "Sampling":
        for name in ("temperature", "top_p", "min_p"):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number, not {getattr(self, name)}")
        if self.temperature < 0:
            raise UsageError("--temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")
        if self.top_k < 0:
            raise UsageError("--top-k must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise UsageError("--min-p must be in [0, 1]")
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be >= 1")
        if not 0 <= self.presence_penalty <= 2:
            raise UsageError("--presence-penalty must be in [0, 2]")
        if self.repeat_penalty <= 0:
            raise UsageError("--repeat-penalty must be > 0 (1 is off)")
        return self


@dataclass(frozen=True)
class Settings:
    """Where things live and how models are run."""

    models_dir: Path
    data_dir: Path
    model: str = "qwq-32b"
    ctx: int = 8192
    gpu_layers: str = "auto"
    kv_budget: str = "0"  # KV cells for a search: tokens ("4096") or bytes ("512MiB", "2GB"); 0 = the context
    head: Path | None = None  # a Q-value head file used instead of the catalog's head for the model
    engine: str | None = None  # an OpenAI-compatible server (URL) that runs the model instead of llama.cpp here
    api_key: str | None = None  # its bearer token
    engine_timeout: float = 600.0  # seconds one request to the engine may take before it counts as stalled
    system: str | None = None  # a system prompt put before the conversation
    cache_type_k: str = "f16"  # KV-cache element types: f16 | q8_0 | q4_0
    cache_type_v: str = "f16"
    flash_attn: bool = False
    chat_template: str | None = None  # "chatml" or a Jinja file used instead of the GGUF's own chat template
    sampling: Sampling = Sampling()
    warnings: tuple[str, ...] = ()  # one line each for the user: misspelt config keys, a config in the old place
    given: frozenset[str] = frozenset()  # the settings the config file, QWQ_* variables or flags set


_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1 << 10, "mb": 1000**2, "mib": 1 << 20, "gb": 1000**3, "gib": 1 << 30}


def parse_kv_budget(text: str) -> tuple[int, bool]:
    """(amount, is_bytes) for a --kv-budget: a plain number is tokens, one with a unit (512MiB, 2GB) is bytes."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS or (not unit and "." in match.group(1)):
        raise UsageError(f"--kv-budget takes tokens (4096) or a size in bytes (512MiB, 2GB), not {text!r}")
    if not unit:
        return int(match.group(1)), False
    return int(float(match.group(1)) * _UNITS[unit]), True


def user_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The directory for history, REPL history and config (QWQ_USER_PATH overrides)."""
    if env.get("QWQ_USER_PATH"):
        return Path(env["QWQ_USER_PATH"])
    return Path(platformdirs.user_data_dir(APP))


def user_config_file(env: Mapping[str, str] = os.environ) -> Path:
    """Where config.toml lives: the XDG config dir (QWQ_CONFIG names another file; QWQ_USER_PATH holds it too)."""
    if env.get("QWQ_CONFIG"):
        return Path(env["QWQ_CONFIG"])
    if env.get("QWQ_USER_PATH"):
        return Path(env["QWQ_USER_PATH"]) / "config.toml"
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def default_models_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Downloaded weights live in the user cache, never in the repo (QWQ_MODELS_DIR overrides)."""
    if env.get("QWQ_MODELS_DIR"):
        return Path(env["QWQ_MODELS_DIR"])
    return Path(platformdirs.user_cache_dir(APP)) / "models"


_SAMPLING_KEYS = {f.name for f in fields(Sampling)}
_SETTING_KEYS = {"model", "ctx", "gpu_layers", "kv_budget", "models_dir", "head", "engine", "api_key",
                 "engine_timeout", "system", "cache_type_k", "cache_type_v", "flash_attn", "chat_template"}


# QWQ_* variables that are not settings (read where they are used); never reported as misspelt
_OTHER_VARIABLES = {"user_path", "config", "debug", "data_dir", "catalog", "bank_arrays", "test_models_dir",
                    "test_real_pull", "test_screen", "yes"}


def _guess(key: str) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, sorted(_SAMPLING_KEYS | _SETTING_KEYS), n=1, cutoff=0.75)
    return found[0] if found else None


def _with_guess(key: str, prefix: str) -> str:
    """`'temprature' (did you mean 'temperature'?)`."""
    guess = _guess(key)
    name = prefix + key.upper() if prefix else key
    if guess is None:
        return repr(name)
    return f"{name!r} (did you mean {(prefix + guess.upper()) if prefix else guess!r}?)"


def _coerce(key: str, value: Any) -> Any:
    """A setting's value in its type; a value of another type (`temperature = true`, `models_dir = 42`) is refused."""
    ints = {"ctx", "top_k", "max_tokens", "seed"}
    floats = {"temperature", "top_p", "min_p", "engine_timeout", "presence_penalty", "repeat_penalty"}
    if key == "flash_attn":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise UsageError(f"setting 'flash_attn' must be true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Path)):
        raise UsageError(f"setting {key!r} must be a {'number' if key in ints | floats else 'string'}, got {value!r}")
    if key in ints | floats:
        if isinstance(value, Path) or (key in ints and isinstance(value, float) and not value.is_integer()):
            raise UsageError(f"setting {key!r} must be a whole number, got {value!r}")
        try:
            number = int(value) if key in ints else float(value)
        except (TypeError, ValueError):
            raise UsageError(f"setting {key!r} must be a number, got {value!r}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise UsageError(f"setting {key!r} must be a finite number, got {value!r}")
        return number
    if key in ("models_dir", "head", "model") and not isinstance(value, (str, Path)):
        raise UsageError(f"setting {key!r} must be a {'path' if key != 'model' else 'model name'} (a string), "
                         f"got {value!r}")
    if key == "kv_budget":
        parse_kv_budget(str(value))  # a bad size is a usage error now, not after the model loads
        return str(value)
    if key in ("models_dir", "head"):
        return Path(str(value)).expanduser()
    if key in ("engine", "api_key", "chat_template"):
        return str(value).strip() or None
    return str(value)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] = os.environ,
    config_file: Path | None = None,
    *,
    samples: bool = True,
) -> Settings:
    """Merge defaults, the TOML config file, QWQ_* variables and flags (None flags are unset).

    `samples=False`, for commands that never sample (models, pull, info, doctor): a bad sampling setting is a
    warning and its default is used, so that a broken QWQ_TEMPERATURE does not stop `qwq models`."""
    data_dir = user_data_dir(env)
    layers: list[Mapping[str, Any]] = []
    warnings: list[str] = []
    path = config_file or user_config_file(env)
    old = data_dir / "config.toml"  # where config.toml lived before it moved to the XDG config dir
    if config_file is None and not env.get("QWQ_CONFIG") and not path.is_file() and old != path and old.is_file():
        warnings.append(f"config file {old} is in the old place, still read; move it to {path}")
        path = old
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
        unknown = [key for key in table if key not in _SAMPLING_KEYS | _SETTING_KEYS]
        if unknown:
            warnings.append(f"config file {path}: unknown {'key' if len(unknown) == 1 else 'keys'} "
                            + ", ".join(_with_guess(key, "") for key in unknown) + " (ignored)")
        layers.append(table)
    variables = {k[4:].lower(): v for k, v in env.items() if k.startswith("QWQ_")}
    misspelt = [key for key in variables if key not in _SAMPLING_KEYS | _SETTING_KEYS and key not in _OTHER_VARIABLES
                and _guess(key)]
    if misspelt:
        warnings.append(", ".join(_with_guess(key, "QWQ_") for key in misspelt) + " ignored: not a setting")
    layers.append(variables)
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in _SAMPLING_KEYS and not samples:
                try:
                    merged[key] = _coerce(key, value)
                except UsageError as exc:
                    warnings.append(f"{exc} (ignored here; a command that samples refuses it)")
            elif key in _SAMPLING_KEYS or key in _SETTING_KEYS:
                merged[key] = _coerce(key, value)
    sampling = replace(Sampling(), **{k: v for k, v in merged.items() if k in _SAMPLING_KEYS})
    try:
        sampling = sampling.validate()
    except UsageError as exc:
        if samples:
            raise
        warnings.append(f"{exc} (ignored here; a command that samples refuses it)")
        sampling = Sampling()
    given = frozenset(merged)
    settings = Settings(
        models_dir=merged.pop("models_dir", None) or default_models_dir(env),
        data_dir=data_dir,
        sampling=sampling,
        warnings=tuple(warnings),
        given=given,
        **{k: v for k, v in merged.items() if k in _SETTING_KEYS - {"models_dir"}},
    )
    if settings.engine is not None and not settings.engine.startswith(("http://", "https://")):
        raise UsageError(f"--engine {settings.engine}: give the server's URL, e.g. http://127.0.0.1:8000")
    if settings.engine_timeout <= 0:
        raise UsageError("engine_timeout must be > 0 seconds")
    if settings.ctx < 64:
        raise UsageError("--ctx must be at least 64 tokens")
    _check_directory(settings.models_dir, "the models directory")
    return settings


def _check_directory(path: Path, what: str) -> None:
    """Exit 18 when `path`, or the nearest part of it that exists, is not a directory (so it cannot be made)."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise QwqError(f"{what} {path} cannot be used: {part} is a file, not a directory (check "
                               "QWQ_MODELS_DIR, XDG_CACHE_HOME or --models-dir)", ExitCode.NOT_A_DIRECTORY)
            return
