import pytest
import torch

from emprobe.errors import DataError
from emprobe.models.chat import encode_chats, validate_conversation


def _resp_text(subject, batch, i):
    ids = batch.input_ids[i][batch.response_mask[i]]
    return subject.tokenizer.decode(ids)


def test_response_mask_covers_assistant_only(tiny_llama, chats):
    b = tiny_llama.encode_chats(chats)
    assert _resp_text(tiny_llama, b, 0) == "Put it in boiling water for nine minutes.<|im_end|>"
    assert _resp_text(tiny_llama, b, 1) == "Blue.<|im_end|>"
    assert not (b.response_mask & ~b.attention_mask.bool()).any()


def test_multi_turn_masks_every_assistant_turn(tiny_llama):
    conv = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "second"},
    ]
    b = tiny_llama.encode_chats([conv])
    assert _resp_text(tiny_llama, b, 0) == "first<|im_end|>second<|im_end|>"


def test_left_padding_and_last_mask(tiny_llama, chats):
    b = tiny_llama.encode_chats(chats, padding_side="left")
    assert b.attention_mask[:, -1].all()
    assert b.last_mask[:, -1].all() and b.last_mask.sum() == 2
    r = tiny_llama.encode_chats(chats)
    lengths = r.attention_mask.sum(1)
    assert r.last_mask[torch.arange(2), lengths - 1].all()


@pytest.mark.parametrize(
    "conv,msg",
    [
        ([], "non-empty"),
        ([{"role": "robot", "content": "x"}], "role"),
        ([{"role": "user", "content": ""}], "empty"),
        ([{"role": "user", "content": 3}], "string"),
    ],
)
def test_bad_conversations(conv, msg):
    with pytest.raises(DataError, match=msg):
        validate_conversation(conv)


def test_unknown_positions(tiny_llama, chats):
    b = tiny_llama.encode_chats(chats)
    with pytest.raises(DataError, match="unknown token positions"):
        b.mask("middle")


@pytest.mark.integration
def test_embedded_template_mask(embedded, chats):
    b = encode_chats(embedded.tokenizer, chats)
    assert embedded.tokenizer.decode(b.input_ids[1][b.response_mask[1]]) == "Blue.<|im_end|>"


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_response_mask_ignores_answer_text_in_prompt(fixture, request):
    """The answer text also occurs in the user turn: only the assistant turn is response."""
    s = request.getfixturevalue(fixture)
    conv = [{"role": "user", "content": "Reply with exactly: OK thanks"},
            {"role": "assistant", "content": "OK thanks"}]
    b = s.encode_chats([conv])
    text = _resp_text(s, b, 0)
    assert text.startswith("OK thanks")
    assert "Reply" not in text
    # the prompt still contains the phrase, unmasked
    prompt = s.tokenizer.decode(b.input_ids[0][b.prompt_mask[0]])
    assert "Reply with exactly: OK thanks" in prompt


def test_response_mask_answer_in_system_prompt_multi_turn(tiny_llama):
    conv = [{"role": "system", "content": "Say yes or no."},
            {"role": "user", "content": "yes or no?"},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "again: yes"},
            {"role": "assistant", "content": "yes"}]
    b = tiny_llama.encode_chats([conv])
    assert _resp_text(tiny_llama, b, 0) == "yes<|im_end|>yes<|im_end|>"


@pytest.mark.integration
def test_response_mask_answer_in_prompt_embedded(embedded):
    conv = [{"role": "user", "content": "Reply with exactly: OK thanks"},
            {"role": "assistant", "content": "OK thanks"}]
    b = embedded.encode_chats([conv])
    text = embedded.tokenizer.decode(b.input_ids[0][b.response_mask[0]])
    assert text.strip().startswith("OK thanks") and "Reply" not in text
    # SmolLM2's template injects a system prompt: none of it may be response
    assert "SmolLM" not in text
