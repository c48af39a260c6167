"""A tiny local stand-in for the Hugging Face hub's file routes, as huggingface_hub 2.x uses them."""

# HEAD/GET /{owner}/{repo}/resolve/{revision}/{path} with ETag (git sha1), X-Linked-Etag / X-Linked-Size (LFS
# sha256 and size), X-Repo-Commit, Content-Length, and Range requests answered with 206. Every request is recorded.

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class ServedFile:
    """Bytes served for one repo path, and the checksums the hub announces for them."""

    content: bytes
    sha256: str
    lfs: bool = True

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(f"blob {len(self.content)}\0".encode() + self.content).hexdigest()


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    """Start with `with FakeHub() as hub:`; point HF_ENDPOINT at `hub.endpoint`."""

    files: dict[tuple[str, str], ServedFile] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    drop_first_get: set[str] = field(default_factory=set)  # filenames whose first GET dies halfway
    _server: ThreadingHTTPServer | None = None

    def add(self, repo: str, filename: str, content: bytes, *, sha256: str | None = None, lfs: bool = True) -> None:
        """Serve content; `sha256` lets a test announce a checksum that does not match the bytes."""
        self.files[(repo, filename)] = ServedFile(content, sha256 or hashlib.sha256(content).hexdigest(), lfs)

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def gets(self, filename: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            owner = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        hub = self.owner
        hub.requests.append(SeenRequest(self.command, self.path, dict(self.headers.items())))
        parts = unquote(self.path.split("?", 1)[0]).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "RepoNotFound")
        repo, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
        served = hub.files.get((repo, filename))
        if served is None:
            known_repo = any(r == repo for r, _ in hub.files)
            return self._error(404, "EntryNotFound" if known_repo else "RepoNotFound")
        content, start = served.content, 0
        status = 200
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[len("bytes=") : -1])
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{served.git_sha1}"')
        if served.lfs:
            self.send_header("X-Linked-Etag", f'"{served.sha256}"')
            self.send_header("X-Linked-Size", str(len(content)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        self.send_header("Content-Length", str(len(content) - start))
        self.end_headers()
        if not body:
            return
        if filename in hub.drop_first_get:
            hub.drop_first_get.discard(filename)
            self.wfile.write(content[start : start + (len(content) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(content[start:])

    def _error(self, status: int, code: str) -> None:
        message = f"{code}: {self.path}".encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(message)
