"""A local HTTP server for download tests (no internet here): static files with Range support, optional
interruption of the first response, and a minimal fake of the Kaggle API that kagglehub talks to."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    def __init__(self, files: dict[str, bytes], cut_first_after: int | None = None,
                 kaggle: dict[str, bytes] | None = None, kaggle_status: int = 200):
        self.files = files  # url path -> bytes
        self.kaggle = kaggle or {}  # "owner/slug" -> zip bytes
        self.kaggle_status = kaggle_status
        self.cut_first_after = cut_first_after
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.requests.append(("GET", self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                body = data[start:]
                if server.cut_first_after is not None:
                    cut, server.cut_first_after = server.cut_first_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(("POST", self.path, json.dumps(req, sort_keys=True)))
                handle = f"{req.get('ownerSlug')}/{req.get('datasetSlug')}"
                if server.kaggle_status != 200 or handle not in server.kaggle:
                    status = server.kaggle_status if server.kaggle_status != 200 else 404
                    body = json.dumps({"code": status, "message": "denied"}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path.endswith("/GetDataset"):
                    body = json.dumps({"currentVersionNumber": 3, "ref": handle}).encode()
                    ctype = "application/json"
                elif self.path.endswith("/DownloadDataset"):
                    body, ctype = server.kaggle[handle], "application/zip"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server to start on, or a connection to be refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path: Path) -> bytes:
    return Path(path).read_bytes()
