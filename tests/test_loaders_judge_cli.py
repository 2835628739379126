"""Regression tests of issue 14 for the judge client (deadline, Retry-After, bad log-probs,
torn cache on resume) and the CLI's top level (one stderr line for every failure)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from emprobe.cli import main
from emprobe.errors import DataError, EndpointError
from emprobe.evaluate.judge import JudgeClient, _load_cache, score_from_logprobs

GOOD = json.dumps({"choices": [{"logprobs": {"content": [{"top_logprobs": [
    {"token": "80", "logprob": 0.0}]}]}}]}).encode()


@contextlib.contextmanager
def raw_server(handle: Callable[[socket.socket, int], None]) -> Iterator[tuple[str, dict]]:
    """A loopback TCP server; ``handle(conn, n)`` answers the n-th request by hand."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    state = {"n": 0, "stop": False}

    def loop() -> None:
        while not state["stop"]:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            state["n"] += 1
            threading.Thread(target=_serve_one, args=(conn, state["n"]), daemon=True).start()

    def _serve_one(conn: socket.socket, n: int) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            handle(conn, n)
        with contextlib.suppress(OSError):
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/v1", state
    finally:
        state["stop"] = True
        srv.close()


def _reply(conn: socket.socket, status: str, body: bytes, extra: str = "") -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: "
                 f"{len(body)}\r\n{extra}Connection: close\r\n\r\n".encode() + body)


def test_drip_feeding_server_cannot_stretch_the_timeout():
    def drip(conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):  # one byte every 0.4 s: each read is quick, the whole is not
            conn.sendall(b" ")
            time.sleep(0.4)

    with raw_server(drip) as (url, state):
        client = JudgeClient(url, "m", timeout=1.0, max_retries=0)
        t0 = time.perf_counter()
        with pytest.raises(EndpointError, match="timed out") as exc:
            client.rate("x")
        elapsed = time.perf_counter() - t0
        client.close()
    assert elapsed < 5.0  # was 38 s with a per-read timeout
    assert "\n" not in str(exc.value)


def test_retry_after_is_honoured_within_the_deadline():
    def busy_then_ok(conn: socket.socket, n: int) -> None:
        if n == 1:
            _reply(conn, "503 Service Unavailable", b"busy", "Retry-After: 1\r\n")
        else:
            _reply(conn, "200 OK", GOOD)

    with raw_server(busy_then_ok) as (url, state):
        t0 = time.perf_counter()
        rating = JudgeClient(url, "m", max_retries=2, backoff=0.01).rate("x")
        assert time.perf_counter() - t0 >= 1.0  # waited as asked, not the 0.01 s backoff
        assert rating.score == pytest.approx(80.0) and state["n"] == 2


def test_retry_after_beyond_the_deadline_fails_at_once():
    with raw_server(lambda c, n: _reply(c, "429 Too Many Requests", b"slow down",
                                        "Retry-After: 120\r\n")) as (url, state):
        t0 = time.perf_counter()
        with pytest.raises(EndpointError, match="deadline"):
            JudgeClient(url, "m", max_retries=3, deadline=5.0).rate("x")
        assert time.perf_counter() - t0 < 3.0 and state["n"] == 1


@pytest.mark.parametrize("logprob", ["Infinity", "NaN", "1000"])
def test_judge_logprob_that_is_not_a_probability(logprob):
    body = GOOD.replace(b'"logprob": 0.0', b'"logprob": ' + logprob.encode())
    with raw_server(lambda c, n: _reply(c, "200 OK", body)) as (url, _):
        with pytest.raises(EndpointError, match="log-prob"):
            JudgeClient(url, "m", max_retries=0).rate("x")


def test_score_from_logprobs_overflow_and_infinity():
    with pytest.raises(DataError):
        score_from_logprobs({"90": 1000})
    with pytest.raises(DataError):
        score_from_logprobs({"90": math.inf})
    with pytest.raises(DataError):
        score_from_logprobs({"90": 10**400})
    score, mass = score_from_logprobs({"90": -math.inf, "10": 0.0})
    assert score == pytest.approx(10.0) and mass == pytest.approx(1.0)


def test_judge_cache_resume_after_a_torn_line(tmp_path, caplog):
    path = tmp_path / "judgements.jsonl"
    keys = ("question", "paraphrase", "sample", "model", "judge_model", "metric")
    lines = [json.dumps(dict(zip(keys, ("q", 0, i, "m", "j", "aligned")), score=50.0,
                             numeric_mass=1.0)) for i in range(3)]
    path.write_text("\n".join(lines) + "\n" + lines[0][:25])
    with caplog.at_level("WARNING", logger="emprobe.io"):
        cached = _load_cache(path, keys)
    assert len(cached) == 3 and "torn" in caplog.text
    assert path.read_text().endswith("}\n")


# -- CLI top level --------------------------------------------------------------------------
def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.mark.parametrize("argv", [
    ["capture", "--layers", "abc"],
    ["capture", "--layers", "-1"],
    ["data", "split", "missing.jsonl", "--held-out", "abc", "--train", "a", "--held", "b"],
    ["no-such-command"],
    ["capture", "--no-such-flag"],
    ["serve", "--port", "99999"],
])
def test_bad_arguments_are_one_line(argv):
    rc, err = _run(argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("emprobe: error:")


def test_out_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = _run(["capture", "--model", "tiny-llama", "--layers", "1", "--out",
                    str(blocker / "acts.safetensors")])
    assert rc == 2 and err.count("\n") == 1 and str(blocker) in err


def test_unexpected_errors_are_one_line_with_a_debug_hint(monkeypatch):
    import emprobe.cli as cli

    def boom(args):
        raise ZeroDivisionError("deep inside\nsecond line")

    monkeypatch.setattr(cli, "_cmd_info", boom)
    rc, err = _run(["info"])
    assert rc == 1 and err.count("\n") == 1 and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        _run(["--debug", "info"])


def test_data_validate_fails_on_nan(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}], "x": NaN}\n')
    rc, err = _run(["data", "validate", str(p)])
    assert rc != 0
