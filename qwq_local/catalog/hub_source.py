"""Fetch one file from the Hugging Face hub into models_dir, resumable across runs, checksum-verified."""

# hf_hub_download (2.x) deletes its temporary file on any failure, so an interrupted 20 GB download would start
# over; we use the same library's metadata call and ranged `http_get` instead, writing to our own `.part` file.

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from qwq_local.catalog import integrity
from qwq_local.catalog.hub_env import HubSettings
from qwq_local.errors import ChecksumError, ExitCode, HubUnreachableError, NotPulledError, QwqError, UnknownModelError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubFile:
    """What the hub says about a file: where to GET it, its etag, size and commit."""

    url: str
    etag: str
    size: int | None
    commit: str


def fetch_hub_file(
    repo: str,
    filename: str,
    dest: Path,
    *,
    revision: str = "main",
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    settings: HubSettings | None = None,
) -> Path:
    """Download repo/filename to dest (resuming dest.part), verify it, move it into place."""
    settings = settings or HubSettings.from_env()
    if settings.offline:
        raise NotPulledError(f"{repo}/{filename} is not downloaded and offline mode is on (HF_HUB_OFFLINE)")
    with integrity.download_lock(dest):
        if dest.is_file():
            return dest  # finished by another pull since the caller looked
        return _fetch(repo, filename, dest, revision, size, sha256, progress, settings)


def _fetch(
    repo: str,
    filename: str,
    dest: Path,
    revision: str,
    size: int | None,
    sha256: str | None,
    progress: bool,
    settings: HubSettings,
) -> Path:
    what = f"{repo}/{filename}"
    remote = hub_file_metadata(repo, filename, revision, settings)
    if size is not None and remote.size is not None and remote.size != size:
        raise ChecksumError(f"{what} on the hub is {remote.size} bytes, the catalog expects {size}")
    expected_sha = sha256 or (remote.etag if _SHA256.fullmatch(remote.etag) else None)
    git_sha1 = None if expected_sha else (remote.etag if _SHA1.fullmatch(remote.etag) else None)
    expected_size = size if size is not None else remote.size

    part = integrity.part_path(dest)
    _drop_stale_part(part, remote.etag)
    if not part.exists() and remote.size is not None:
        _seed_from_hf_cache(repo, filename, remote, part, settings)
    done = part.stat().st_size if part.exists() else 0
    if expected_size is not None and done > expected_size:
        part.unlink()
        done = 0
    if expected_size is not None:
        integrity.ensure_free_space(dest.parent, expected_size - done, what)
    _download(remote, part, done, filename, progress, settings)
    try:
        integrity.verify_or_discard(part, what=what, size=expected_size, sha256=expected_sha, git_sha1=git_sha1)
    finally:
        _etag_path(part).unlink(missing_ok=True)
    return integrity.promote(part, dest)


def hub_file_metadata(repo: str, filename: str, revision: str, settings: HubSettings) -> HubFile:
    """HEAD the file's resolve URL (following hub redirects) for its etag, size and download location."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision, endpoint=settings.endpoint)
    try:
        meta = get_hf_file_metadata(
            url, token=settings.token or False, timeout=settings.etag_timeout, endpoint=settings.endpoint
        )
    except Exception as exc:  # noqa: BLE001 - mapped to QwqError kinds, re-raised otherwise
        raise _hub_error(exc, f"{repo}/{filename}", settings) from None
    if not meta.etag or not meta.commit_hash:
        raise HubUnreachableError(f"{settings.endpoint} did not answer like a Hugging Face hub (no ETag/commit)")
    return HubFile(url=meta.location or url, etag=meta.etag, size=meta.size, commit=meta.commit_hash)


def _download(remote: HubFile, part: Path, done: int, filename: str, progress: bool, settings: HubSettings) -> None:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]
    from huggingface_hub.utils.tqdm import silent_tqdm

    headers = build_hf_headers(token=settings.token or False, library_name="qwq_local")
    on_cdn = urlparse(remote.url).netloc != urlparse(settings.endpoint).netloc
    if on_cdn:
        headers.pop("authorization", None)  # signed CDN URLs must not receive the hub token
    _etag_path(part).write_text(remote.etag)
    try:
        with integrity.open_part(part) as f:
            http_get(
                remote.url,
                f,
                resume_size=done,
                headers=headers,
                expected_size=remote.size,
                displayed_filename=filename.rsplit("/", 1)[-1],
                tqdm_class=None if progress else silent_tqdm,
            )
    except Exception as exc:  # noqa: BLE001 - OSError, HfHubHTTPError, httpx2 errors after the library's retries
        if integrity.is_disk_full(exc):
            raise integrity.disk_full_error(exc, part) from None  # type: ignore[arg-type]
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if on_cdn and status in (401, 403):
            raise HubUnreachableError(f"the download link for {filename} expired; pull again to resume") from None
        raise _hub_error(exc, filename, settings) from None


def _hub_error(exc: BaseException, what: str, settings: HubSettings) -> BaseException:
    """Translate huggingface_hub / httpx2 failures into the QwqError family."""
    import httpx2
    from huggingface_hub import errors as hf

    if isinstance(exc, hf.OfflineModeIsEnabled):
        return NotPulledError(f"{what} is not downloaded and offline mode is on (HF_HUB_OFFLINE)")
    if isinstance(exc, hf.GatedRepoError):
        return QwqError(f"{what} is gated: accept its license on the hub and set HF_TOKEN", ExitCode.HUB_ACCESS_DENIED)
    if isinstance(exc, (hf.RepositoryNotFoundError, hf.RevisionNotFoundError, hf.RemoteEntryNotFoundError)):
        return UnknownModelError(f"{what} was not found on {settings.endpoint}")
    if isinstance(exc, hf.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            return QwqError(f"access to {what} denied ({status}): check HF_TOKEN", ExitCode.HUB_ACCESS_DENIED)
        return HubUnreachableError(f"the hub answered {status} for {what}; try later (a partial download resumes)")
    if isinstance(exc, (httpx2.TransportError, hf.FileMetadataError, ConnectionError, TimeoutError)):
        return HubUnreachableError(
            f"cannot reach {settings.endpoint} for {what} ({type(exc).__name__}); "
            "check the network or HF_ENDPOINT (a partial download resumes on the next pull)"
        )
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return ChecksumError(f"{what}: the server sent a different number of bytes than announced; pull again")
    return exc


def _etag_path(part: Path) -> Path:
    return part.with_name(part.name + ".etag")


def _drop_stale_part(part: Path, etag: str) -> None:
    """A partial download of another version of the file cannot be resumed."""
    marker = _etag_path(part)
    if part.exists() and (not marker.exists() or marker.read_text().strip() != etag):
        part.unlink()
    if not part.exists():
        marker.unlink(missing_ok=True)


def _seed_from_hf_cache(repo: str, filename: str, remote: HubFile, part: Path, settings: HubSettings) -> None:
    """Reuse a complete copy already in the Hugging Face cache (HF_HOME) instead of downloading it again."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, filename, cache_dir=settings.hub_cache, revision=remote.commit)
    if not isinstance(cached, str) or os.path.getsize(cached) != remote.size:
        return  # only whole files: appending to a hard link would write into the cache's blob
    source = Path(cached).resolve()
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, part)
    except OSError:
        shutil.copyfile(source, part)
