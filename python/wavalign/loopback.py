"""Plumbing shared by the loopback test servers (the fake judge and the fake codec server).

`LoopbackServer` serves a handler class on 127.0.0.1 at a free port, in a daemon thread, as
a context manager; `QuietHandler` replies without logging each request and tolerates a
client that has already hung up (its timeout or deadline passed), which the judge and codec
clients' tests provoke on purpose.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) makes bursts of concurrent clients wait for a 1 s SYN
    # retry; a real endpoint would not, so neither does this one.
    request_queue_size = 256
    daemon_threads = True


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, status: int, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up and closed the connection
            self.close_connection = True


class LoopbackServer:
    """Serves `handler` (a BaseHTTPRequestHandler subclass) on 127.0.0.1 while entered."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
