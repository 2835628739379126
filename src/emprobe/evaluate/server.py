"""Serve a loaded ``Subject`` as an OpenAI-compatible chat-completions endpoint (loopback).

Routes: ``GET /v1/models`` and ``POST /v1/chat/completions`` with ``messages``,
``max_tokens`` (default 16), ``temperature`` (0 = greedy), ``top_p``, ``seed``,
``logprobs`` and ``top_logprobs`` (0-20). Log-probabilities are those of the model's raw
next-token distribution (before temperature), as OpenAI reports them. Requests are served by
a ``ThreadingHTTPServer`` but run on the model one at a time (a lock), so any local model
(including the embedded one) can act as a judge for ``emprobe.evaluate.judge``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import torch

from emprobe.errors import EmprobeError
from emprobe.models.chat import validate_conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from emprobe.models.subject import Subject

__all__ = ["LocalServer", "start_server", "serve_in_background", "chat_completion"]

MAX_TOP_LOGPROBS = 20


class RequestError(EmprobeError):
    """A bad request body (answered with HTTP 400)."""


def _token_entry(tokenizer: PreTrainedTokenizerBase, token_id: int,
                 logprob: float) -> dict[str, object]:
    text = tokenizer.decode([token_id])
    if not isinstance(text, str):  # one sequence of ids decodes to one string
        raise TypeError(f"tokenizer.decode gave {type(text).__name__}, not str")
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _cache_keyword(subject: Subject) -> str:
    # transformers 5.x renamed ``past_key_values`` to ``cache``; support both
    params = inspect.signature(subject.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def chat_completion(subject: Subject, body: object, model_name: str) -> dict[str, object]:
    """Answer one chat-completions request body (parsed JSON; anything but an object is a
    ``RequestError``) with the subject (OpenAI response shape)."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    try:
        messages = validate_conversation(body.get("messages"), where="messages")
    except EmprobeError as exc:
        raise RequestError(str(exc)) from None
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
    temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
    top_p = float(body.get("top_p", 1.0) or 1.0)
    want_logprobs = bool(body.get("logprobs", False))
    top_k = int(body.get("top_logprobs", 0) or 0)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError("max_tokens must be a positive integer")
    if not 0 <= top_k <= MAX_TOP_LOGPROBS:
        raise RequestError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    if int(body.get("n", 1) or 1) != 1:
        raise RequestError("only n=1 is supported")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(body.get("seed", 0) or 0))
    batch = subject.encode_chats([messages], add_generation_prompt=True)
    eot = subject.end_of_turn_id()
    stops = {eot, subject.tokenizer.eos_token_id}
    ids = batch.input_ids
    past = None
    new: list[int] = []
    content_lp: list[dict[str, object]] = []
    finish = "length"
    cache_kw = _cache_keyword(subject)
    for _ in range(max_tokens):
        out = subject.model(input_ids=ids, use_cache=True, **{cache_kw: past})
        past = getattr(out, cache_kw, None) or getattr(out, "past_key_values", None)
        logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # [vocab]
        if temperature <= 0:
            nxt = int(torch.argmax(logprobs))
        else:
            probs = torch.softmax(logprobs / temperature, dim=-1)
            if top_p < 1.0:
                sp, si = torch.sort(probs, descending=True)
                keep = torch.cumsum(sp, 0) - sp < top_p
                probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
            nxt = int(torch.multinomial(probs.cpu(), 1, generator=gen))
        if want_logprobs:  # the stop token is listed too, so its top_logprobs are not lost
            entry = _token_entry(subject.tokenizer, nxt, float(logprobs[nxt]))
            vals, idx = torch.topk(logprobs, top_k) if top_k else (torch.empty(0), torch.empty(0))
            entry["top_logprobs"] = [
                _token_entry(subject.tokenizer, int(i), float(v)) for v, i in zip(vals, idx)
            ]
            content_lp.append(entry)
        if nxt in stops:
            finish = "stop"
            break
        new.append(nxt)
        ids = torch.tensor([[nxt]], device=batch.input_ids.device)
    text = subject.tokenizer.decode(new, skip_special_tokens=True)
    n_prompt = int(batch.input_ids.shape[1])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": content_lp} if want_logprobs else None,
            "finish_reason": finish,
        }],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(new),
                  "total_tokens": n_prompt + len(new)},
    }


class LocalServer:
    """A running endpoint. ``url`` ends in ``/v1``; ``requests`` counts completions served."""

    def __init__(self, subject: Subject, host: str = "127.0.0.1", port: int = 0,
                 model_name: str | None = None, api_key: str | None = None) -> None:
        self.subject = subject
        self.model_name = model_name or str(getattr(subject, "name", "emprobe-model"))
        self.api_key = api_key
        self.requests = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> LocalServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _send(self, code: int, obj: dict[str, object]) -> None:
                data = json.dumps(obj).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str, kind: str) -> None:
                self._send(code, {"error": {"message": message, "type": kind}})

            def _authorised(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization", "") == f"Bearer {server.api_key}":
                    return True
                self._error(401, "invalid API key", "invalid_request_error")
                return False

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [{
                        "id": server.model_name, "object": "model", "owned_by": "emprobe"}]})
                else:
                    self._error(404, f"no route {self.path}", "not_found")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self._authorised():
                    return
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._error(404, f"no route {self.path}", "not_found")
                    return
                try:
                    body = json.loads(raw.decode("utf-8"))
                    with server._lock:
                        server.requests += 1
                        resp = chat_completion(server.subject, body, server.model_name)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self._error(400, "request body is not JSON", "invalid_request_error")
                    return
                except RequestError as exc:
                    self._error(400, str(exc), "invalid_request_error")
                    return
                except Exception as exc:  # a model failure is a server error, not a crash
                    self._error(500, f"{type(exc).__name__}: {exc}", "server_error")
                    return
                self._send(200, resp)

        return Handler


def start_server(subject: Subject, port: int = 0, host: str = "127.0.0.1",
                 model_name: str | None = None, api_key: str | None = None) -> LocalServer:
    """Start serving in a background thread; call ``.close()`` when done."""
    return LocalServer(subject, host, port, model_name, api_key).start()


@contextlib.contextmanager
def serve_in_background(subject: Subject, port: int = 0, host: str = "127.0.0.1",
                        model_name: str | None = None,
                        api_key: str | None = None) -> Iterator[str]:
    """Serve ``subject`` while the block runs; yields the base URL (``http://host:port/v1``)."""
    server = start_server(subject, port, host, model_name, api_key)
    try:
        yield server.url
    finally:
        server.close()
