"""A real loopback OpenAI-compatible judge that answers chosen top-20 log-probabilities.

``logprob_judge(choose, models)`` starts a ``ThreadingHTTPServer`` on 127.0.0.1 and yields
``(base_url, log)``: ``GET /v1/models`` lists ``models``; ``POST /v1/chat/completions``
calls ``choose(prompt)`` with the user message and answers its ``{token: probability}``
(sent as log-probabilities, in the OpenAI shape). ``log`` records every request body.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(probs: dict[str, float]) -> dict:
    top = [{"token": t, "logprob": math.log(p) if p > 0 else -9999.0,
            "bytes": list(t.encode())} for t, p in probs.items()]
    first = top[0]["token"] if top else ""
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": first},
                         "finish_reason": "length",
                         "logprobs": {"content": [{"token": first, "logprob": 0.0,
                                                   "top_logprobs": top}]}}]}


@contextmanager
def logprob_judge(choose: Callable[[str], dict[str, float]],
                  models: tuple[str, ...] = ("judge",),
                  fail: Callable[[int], int | None] | None = None
                  ) -> Iterator[tuple[str, list[dict]]]:
    """Yields ``(url, log)``; ``fail(n)`` may return an HTTP status for the n-th POST."""
    log: list[dict] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, obj: object) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"}
                                                        for m in models]})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            with lock:
                log.append(body)
                n = len(log)
            code = fail(n) if fail else None
            if code:
                self._send(code, {"error": {"message": "busy"}})
                return
            prompt = body["messages"][-1]["content"]
            self._send(200, completion(choose(prompt)))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", log
    finally:
        httpd.shutdown()
        httpd.server_close()
