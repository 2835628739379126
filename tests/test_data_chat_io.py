import json
import logging

import pytest

from emprobe.data.chat_io import (
    ReadStats,
    from_hf_dataset,
    iter_chat_jsonl,
    read_chat_jsonl,
    to_hf_dataset,
    write_chat_jsonl,
)
from emprobe.errors import ConfigError, DataError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write_lines(path, lines):
    path.write_bytes(b"".join(
        (ln if isinstance(ln, bytes) else ln.encode("utf-8")) + b"\n" for ln in lines))
    return path


def test_roundtrip_keeps_extra_keys(tmp_path):
    recs = [dict(GOOD, task="t", meta={"a": 1}),
            {"messages": [{"role": "system", "content": "sys"}, *GOOD["messages"]], "id": 7}]
    out = write_chat_jsonl(tmp_path / "d.jsonl", recs)
    back = read_chat_jsonl(out)
    assert back == recs
    assert back.skipped == 0
    assert list(iter_chat_jsonl(out)) == recs


def test_write_accepts_bare_message_lists_and_is_atomic(tmp_path):
    target = tmp_path / "d.jsonl"
    write_chat_jsonl(target, [GOOD["messages"]])
    assert read_chat_jsonl(target) == [GOOD]
    before = target.read_bytes()
    with pytest.raises(DataError, match="record 1"):
        write_chat_jsonl(target, [GOOD, {"messages": []}])
    assert target.read_bytes() == before  # the failed write left the old file untouched
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]


@pytest.mark.parametrize("line, what", [
    ('{"messages": [{"role": "user", "content": "a"}', "broken JSON"),
    ('{"messages": [{"role": "bot", "content": "a"}]}', "role 'bot'"),
    ('{"messages": []}', "'messages' is empty"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]}',
     "empty content"),
    ('{"conversation": []}', "missing 'messages'"),
    ('[1, 2]', "message 0 is not an object"),
    ('"just a string"', "expected a JSON object"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}',
     "must be a string"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "no assistant message"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, '
     '{"role": "assistant", "content": "b"}]}', "only the first"),
])
def test_bad_line_names_file_line_and_problem(tmp_path, line, what):
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", line])
    with pytest.raises(DataError) as err:
        read_chat_jsonl(path, require_assistant=True)
    msg = str(err.value)
    assert f"{path}:3:" in msg and what in msg
    assert "\n" not in msg


def test_non_utf8_line(tmp_path):
    path = _write_lines(tmp_path / "latin.jsonl", [json.dumps(GOOD), b'{"messages": "caf\xe9"}'])
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        read_chat_jsonl(path)


def test_missing_file():
    with pytest.raises(DataError, match="no such file"):
        read_chat_jsonl("/nonexistent/x.jsonl")


def test_bad_errors_mode(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD)])
    with pytest.raises(ConfigError, match="errors="):
        read_chat_jsonl(path, errors="ignore")


def test_skip_mode_counts_and_logs(tmp_path, caplog):
    lines = [json.dumps(GOOD), "{broken", json.dumps({"messages": []}), b"\xff\xfe",
             json.dumps(GOOD), json.dumps({"nope": 1})]
    path = _write_lines(tmp_path / "mixed.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="emprobe.data"):
        recs = read_chat_jsonl(path, errors="skip")
    assert len(recs) == 2 and recs.skipped == 4
    assert [p.split(":")[1] for p in recs.problems] == ["2", "3", "4", "6"]
    assert "skipped 4" in caplog.text
    stats = ReadStats()
    assert len(list(iter_chat_jsonl(path, errors="skip", stats=stats))) == 2
    assert (stats.read, stats.skipped) == (2, 4)


def test_prompt_only_records_need_opt_in_check(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", [json.dumps({"messages": [GOOD["messages"][0]]})])
    assert len(read_chat_jsonl(path)) == 1
    with pytest.raises(DataError, match="p.jsonl:1: no assistant message"):
        read_chat_jsonl(path, require_assistant=True)


def test_streaming_reads_lazily(tmp_path):
    path = _write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD), "{broken"])
    it = iter_chat_jsonl(path)
    assert next(it) == GOOD  # the broken second line is not read yet
    with pytest.raises(DataError, match=":2:"):
        next(it)


def test_hf_dataset_roundtrip():
    recs = [dict(GOOD, task="a", meta={"x": 1}),
            {"messages": [{"role": "system", "content": "s"}, *GOOD["messages"]], "task": "b",
             "meta": {"y": "z"}}]
    ds = to_hf_dataset(recs)
    assert len(ds) == 2 and "messages" in ds.column_names
    assert from_hf_dataset(ds) == recs


def test_from_hf_prompt_completion_and_errors():
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "q", "completion": "a"}])
    assert from_hf_dataset(ds)[0]["messages"] == [{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": "a"}]
    dd = datasets.DatasetDict({"train": ds})
    with pytest.raises(DataError, match="DatasetDict"):
        from_hf_dataset(dd)
    bad = datasets.Dataset.from_list([{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match="dataset row 0"):
        from_hf_dataset(bad)
