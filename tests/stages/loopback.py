"""A real HTTP server on a loopback address for the download tests: each test file brings its handler."""

from __future__ import annotations

import http.server
import io
import threading

from PIL import Image


def jpeg(w: int, h: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG")
    return buf.getvalue()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """The tests' request handler base: answers with bytes or a redirect, logs nothing."""

    def send_body(self, body: bytes | None) -> None:
        """200 with `body`, 404 when it is None; a client that gave up (a timeout test) is no error."""
        try:
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class LoopbackServer:
    """Serves `handler` on (host, port) in a thread while the `with` block runs; port 0 picks a free one."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1", port: int = 0):
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
