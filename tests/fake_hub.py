"""A local stand-in for the Hugging Face hub's file downloads, in a thread: serves
`/{repo}/resolve/{revision}/{file}` with Range support, records every request, and can cut the
connection after N bytes (`cut_after`, for the next `cut_times` requests) to test resuming."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeHub:
    def __init__(self):
        self.files: dict[str, bytes] = {}  # "repo/resolve/main/file" -> content
        self.requests: list[dict] = []  # {"path", "range", "auth"}
        self.cut_after: int | None = None
        self.cut_times = 0
        self.ignore_range = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                     "auth": self.headers.get("Authorization")})
                data = hub.files.get(self.path.lstrip("/").split("?")[0])
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = 0, 200
                wanted = self.headers.get("Range")
                if wanted and not hub.ignore_range:
                    start = int(wanted.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if hub.cut_after is not None and hub.cut_times > 0:
                    hub.cut_times -= 1
                    self.wfile.write(body[: hub.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, filename: str, data: bytes, revision: str = "main") -> dict:
        """Serve `data`; returns its registry entry (as model_download's test registry takes it)."""
        self.files[f"{repo}/resolve/{revision}/{filename}"] = data
        return {"title": "SD1.5", "repo_id": repo, "filename": filename, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def serve_file(payload: bytes, repo: str = "test-org/tiny-base"):
    """A running FakeHub and registry_env(name, data) -> the environment under which
    `download-model NAME` fetches `data` from it (the registry's NAME replaced by a test entry)."""
    from instant_lora.model_download import TEST_REGISTRY_ENV

    with FakeHub() as hub, tempfile.TemporaryDirectory() as tmp:
        def registry_env(name: str, data: bytes = payload) -> dict:
            entry = hub.add(repo, f"{name}-test.safetensors", data)
            path = write_registry(Path(tmp) / f"{name}.json", {name: entry})
            return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", TEST_REGISTRY_ENV: str(path)}

        yield hub.endpoint, registry_env


def write_registry(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def closed_port() -> int:
    """A port nothing listens on: connecting is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
