"""A local OpenAI-compatible judge server on 127.0.0.1 that misbehaves on purpose.

Used by the tests and benchmarks/bench_judge.py; handy to check a client setup offline.

The behaviour is chosen by a marker "case:NAME" in the user text (ok, slow, error500,
ratelimit, ratelimit_long, malformed, prose, range, two_scores, drop, bad_request, trickle:
a valid answer sent one byte every TRICKLE_INTERVAL_S, so no single read ever times out).
Requests are counted per case. The server only ever listens on the loopback interface and stops with the test.
"""

from __future__ import annotations

import json
import re
import threading
import time
from wavalign.loopback import LoopbackServer, QuietHandler


TRICKLE_INTERVAL_S = 0.2  # case:trickle sends its (valid) answer one byte at a time this often


class JudgeServer(LoopbackServer):
    def __init__(self, latency_s: float = 0.0):
        self.latency_s = latency_s
        self.counts: dict[str, int] = {}
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                text = json.dumps(payload["messages"][-1]["content"])
                case = re.search(r"case:([a-z0-9_\-]+)", text).group(1)
                with server.lock:
                    server.counts[case] = server.counts.get(case, 0) + 1
                    seen = server.counts[case]
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._handle(case, seen)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _handle(self, case, seen):
                if server.latency_s:
                    time.sleep(server.latency_s)

                def answer(content):
                    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})

                if case == "ok":
                    self._reply(200, answer("Clear and correct. <score>4</score>"))
                elif case == "slow":
                    time.sleep(1.0)
                    self._reply(200, answer("<score>5</score>"))
                elif case == "error500":
                    self._reply(500, "boom") if seen == 1 else self._reply(200, answer("<score>3</score>"))
                elif case == "ratelimit":
                    if seen == 1:
                        self._reply(429, "slow down", {"Retry-After": "0.2"})
                    else:
                        self._reply(200, answer("<score>2.5</score>"))
                elif case == "malformed":
                    self._reply(200, "{this is not json")
                elif case == "prose":
                    self._reply(200, answer("It sounds lovely, I'd give it a four."))
                elif case == "range":
                    self._reply(200, answer("<score>9</score>"))
                elif case == "two_scores":
                    self._reply(200, answer("<score>2</score> or maybe <score>4</score>"))
                elif case == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif case == "bad_request":
                    self._reply(400, "bad request")
                elif case == "ratelimit_long":
                    self._reply(429, "come back in an hour", {"Retry-After": "3600"})
                elif case == "trickle":  # a valid answer, one byte every TRICKLE_INTERVAL_S
                    self._trickle(answer("<score>5</score>"))
                else:
                    self._reply(404, "unknown case")

            def _trickle(self, body):
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.flush()
                    for i in range(len(data)):
                        time.sleep(TRICKLE_INTERVAL_S)
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                except OSError:  # the client gave up and closed the connection
                    self.close_connection = True

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"
