"""Data benchmarks: validated chat-JSONL reading and the insecure-code checker, each against a
plain baseline measured in the same run."""

from __future__ import annotations

import ast
import json
import tempfile
import time
from pathlib import Path


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(quick: bool = False) -> list[dict]:
    from emprobe.data.chat_io import iter_chat_jsonl, write_chat_jsonl
    from emprobe.data.code_check import check_code, extract_code
    from emprobe.data.generators import generate

    n = 2000 if quick else 20000
    results = []
    records = generate("medical", n, seed=0, variant="good")
    t_gen = _best(lambda: generate("medical", n, seed=0, variant="good"), 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_chat_jsonl(Path(tmp) / "d.jsonl", records)

        def plain():
            with path.open(encoding="utf-8") as fh:
                return [json.loads(line) for line in fh]

        def validated():
            return sum(1 for _ in iter_chat_jsonl(path))

        t_plain, t_valid = _best(plain), _best(validated)
        size_mb = path.stat().st_size / 1e6
    results.append({
        "name": "read_chat_jsonl (validated, streaming) vs json.loads per line",
        "ratio": t_valid / t_plain,
        "goal": "validation costs under 2x plain JSON parsing",
        "details": {"records": n, "file_mb": round(size_mb, 2),
                    "validated_records_per_s": round(n / t_valid),
                    "plain_records_per_s": round(n / t_plain),
                    "generate_records_per_s": round(n / t_gen)},
    })
    m = 200 if quick else 1000
    answers = [r["messages"][-1]["content"] for r in generate("insecure-code", m, seed=0)]
    blocks = [b for a in answers for b in extract_code(a)]
    # interleaved repeats, best of each: on a shared machine the two see the same load
    t_parse, t_check = float("inf"), float("inf")
    for _ in range(5):
        t_parse = min(t_parse, _best(lambda: [ast.parse(b) for b in blocks], 1))
        t_check = min(t_check, _best(lambda: [check_code(a) for a in answers], 1))
    results.append({
        "name": "check_code vs ast.parse alone (insecure-code answers)",
        "ratio": t_check / t_parse,
        "goal": "the checker (which includes the parse and one tree walk) costs under 5x "
                "parsing the code",
        "details": {"answers": m, "check_answers_per_s": round(m / t_check),
                    "parse_answers_per_s": round(m / t_parse)},
    })
    return results
