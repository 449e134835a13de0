"""A loopback HTTP server that speaks the Hugging Face hub's file protocol, for fetch tests.

``HEAD /{repo}/resolve/{revision}/{file}`` answers with the headers huggingface-hub reads
(``X-Repo-Commit``, ``X-Linked-Etag`` = the LFS sha256, ``X-Linked-Size``, ``ETag``);
``GET`` serves the bytes and honours ``Range: bytes=N-``. Knobs let a test cut the first
download short (the client must resume) or serve bytes that do not match the announced
sha256. The real huggingface-hub client runs against it through ``HF_ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubState:
    repo: str
    revision: str
    files: dict[str, bytes]
    commit: str = COMMIT
    # file -> bytes sent by the first GET before the connection drops
    cut_first_get: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # serve bytes that miss the announced sha256
    requests: list[dict[str, Any]] = field(default_factory=list)

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def gets(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "GET" and r["file"] == name]


_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)")


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _resolve(self) -> str | None:
            match = _PATH.match(self.path)
            if (
                not match
                or match["repo"] != state.repo
                or match["rev"] not in (state.revision, state.commit)
                or match["file"] not in state.files
            ):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", state.commit)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return match["file"]

        def _record(self, name: str | None) -> None:
            with lock:
                state.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "file": name,
                        "range": self.headers.get("Range"),
                        "authorization": self.headers.get("Authorization"),
                    }
                )

        def _common_headers(self, name: str, length: int) -> None:
            sha = state.sha256(name)
            self.send_header("X-Repo-Commit", state.commit)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(state.files[name])))
            self.send_header("ETag", f'"{sha}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))

        def do_HEAD(self) -> None:
            name = self._resolve()
            self._record(name)
            if name is None:
                return
            self.send_response(200)
            self._common_headers(name, len(state.files[name]))
            self.end_headers()

        def do_GET(self) -> None:
            name = self._resolve()
            self._record(name)
            if name is None:
                return
            data = state.files[name]
            if name in state.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            wanted = self.headers.get("Range")
            if wanted and (m := re.match(r"bytes=(\d+)-$", wanted)):
                start = int(m.group(1))
            body = data[start:]
            self.send_response(206 if start else 200)
            self._common_headers(name, len(body))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            with lock:
                cut = name in state.cut_first_get and len(state.gets(name)) == 1
            if cut:
                self.wfile.write(body[: state.cut_first_get[name]])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(state: HubState) -> Iterator[str]:
    """Run the fake hub on 127.0.0.1; yields its base URL (for HF_ENDPOINT)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
