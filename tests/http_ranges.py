"""A small HTTP server for tests: serves a folder's files with ``Range`` requests (bytes
``a-b``, ``a-``, ``-n``) and ``Content-Length`` on ``HEAD``, as object stores and CDNs do
(Python's ``http.server`` ignores ``Range``)."""

from __future__ import annotations

import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeHandler(BaseHTTPRequestHandler):
    root: Path  # set on the subclass a server is made with
    ranges_served: list[tuple[str, int, int]]  # (path, first, last) of each range request

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        path = (self.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        return path

    def do_HEAD(self) -> None:
        path = self._file()
        if path is not None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            return
        data = path.read_bytes()
        size = len(data)
        asked = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if asked is None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Length", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data)
            return
        first_s, last_s = asked.groups()
        if first_s:
            first, last = int(first_s), min(int(last_s) if last_s else size - 1, size - 1)
        else:  # the last n bytes
            first, last = max(size - int(last_s or 0), 0), size - 1
        if first >= size or last < first:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        self.ranges_served.append((self.path, first, last))
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[first : last + 1])


class RangeServer:
    """Serves ``root`` on a free port of 127.0.0.1 from a thread; ``url`` is its base URL."""

    def __init__(self, root: Path) -> None:
        handler = type("Handler", (RangeHandler,), {"root": root, "ranges_served": []})
        self.handler = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def ranges_served(self) -> list[tuple[str, int, int]]:
        return self.handler.ranges_served

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
