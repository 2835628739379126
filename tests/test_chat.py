import os

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


# -- chat templates and BOS (emprobe.models.templates) -------------------------------------
def _save_tiny(folder, style):
    """A tiny Llama saved with a tokenizer of the given style (gemma: BOS + template;
    base: BOS, no template)."""
    from emprobe.models.tiny import build_tiny, make_tiny_tokenizer

    model, _ = build_tiny("tiny-llama")
    tok = make_tiny_tokenizer(style)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _fmt_name(subject):
    assert subject.chat_format is not None
    return subject.chat_format.name


CONV = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi there"}]


def test_tokenizer_without_bos_gets_none(tiny_llama):
    from emprobe.models.templates import expects_bos

    assert not expects_bos(tiny_llama.tokenizer)
    tok = tiny_llama.tokenizer
    b = tiny_llama.encode_chats([CONV])
    text = tok.apply_chat_template(CONV, tokenize=False)
    assert b.input_ids[0].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    t = tiny_llama.encode_texts(["hello"])
    assert tiny_llama.tokenizer.decode(t.input_ids[0]) == "hello"


def test_template_that_writes_bos_gets_exactly_one(tmp_path):
    from emprobe import load_model

    s = load_model(_save_tiny(tmp_path / "m", "gemma"))
    bos = s.tokenizer.bos_token_id
    assert _fmt_name(s) == "tokenizer"
    for b in (s.encode_chats([CONV]), s.encode_texts(["hello"])):
        ids = b.input_ids[0].tolist()
        assert ids[0] == bos and ids.count(bos) == 1
    # the end-of-turn marker the template writes is the first stop token, then EOS
    eot = s.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert s.stop_token_ids() == [eot, s.tokenizer.eos_token_id]
    assert s.end_of_turn_id() == eot


def test_base_tokenizer_gets_plain_format_with_warning_and_bos(tmp_path):
    from emprobe import load_model
    from emprobe.models.templates import PLAIN_TEMPLATE, ChatTemplateWarning

    folder = _save_tiny(tmp_path / "base", "base")
    with pytest.warns(ChatTemplateWarning, match="plain 'User:/Assistant:'"):
        s = load_model(folder)
    assert _fmt_name(s) == "plain" and s.tokenizer.chat_template == PLAIN_TEMPLATE
    b = s.encode_chats([CONV])
    ids = b.input_ids[0].tolist()
    assert ids[0] == s.tokenizer.bos_token_id and ids.count(ids[0]) == 1
    text = s.tokenizer.decode(ids)
    assert "<|im_start|>" not in text and "<start_of_turn>" not in text
    assert "User: Say hi.\nAssistant: hi there<eos>" in text
    assert s.tokenizer.decode(b.input_ids[0][b.response_mask[0]]).strip() == "hi there<eos>"
    assert s.stop_token_ids() == [s.tokenizer.eos_token_id]
    # generation stops at the next "User:" line and never returns it
    out = s.generate([CONV[:1]], max_new_tokens=6)
    assert "User:" not in out[0]


def test_explicit_choices(tmp_path):
    from emprobe import load_model
    from emprobe.errors import ConfigError

    folder = _save_tiny(tmp_path / "base", "base")
    with pytest.raises(ConfigError, match="needs the tokens"):
        load_model(folder, chat_template="chatml")
    with pytest.raises(ConfigError, match="no chat template"):
        load_model(folder, chat_template="tokenizer")
    with pytest.raises(ConfigError, match="neither one of"):
        load_model(folder, chat_template=str(tmp_path / "missing.jinja"))
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    s = load_model(folder, chat_template=jinja)
    assert _fmt_name(s) == "file"
    b = s.encode_chats([CONV])
    assert "[assistant] hi there" in s.tokenizer.decode(b.input_ids[0])
    # chatml is allowed where the vocabulary has its tokens; plain overrides an own template
    assert _fmt_name(load_model("tiny-llama", chat_template="chatml")) == "chatml"
    assert _fmt_name(load_model("tiny-llama", chat_template="plain")) == "plain"


def test_cli_chat_template_flag_anywhere(tmp_path, capsys):
    from emprobe.cli import main
    from emprobe.models.templates import ENV_VAR

    folder = _save_tiny(tmp_path / "base", "base")
    rc = main(["models", "show", "--model", str(folder), "--chat-template", "plain"])
    out = capsys.readouterr().out
    assert rc == 0 and "chat template 'plain' (chosen explicitly" in out
    assert "BOS added:     True" in out
    assert os.environ.get(ENV_VAR) is None  # restored after the command
    assert main(["models", "show", "--model", str(folder), "--chat-template=chatml"]) == 2
    assert "needs the tokens" in capsys.readouterr().err


def test_sink_mask_first_real_token_and_bos(tmp_path):
    from emprobe import load_model
    from emprobe.models.chat import sink_mask

    s = load_model(_save_tiny(tmp_path / "g", "gemma"))
    convs = [CONV, [{"role": "user", "content": "A much longer question here?"},
                    {"role": "assistant", "content": "ok"}]]
    for side in ("left", "right"):
        b = s.encode_chats(convs, padding_side=side)
        m = s.sink_mask(b)
        assert m.sum(1).tolist() == [1, 1]  # one BOS, which is the first real token
        assert (b.input_ids[m] == s.tokenizer.bos_token_id).all()
    # without a BOS id only the first real token is a sink (ChatML's <|im_start|> elsewhere
    # in the row is kept)
    b = encode_chats(s.tokenizer, convs, padding_side="left")
    assert sink_mask(b).sum().item() == 2


def test_layer_means_leave_out_the_sink(tiny_llama, one_thread):
    import emprobe
    from emprobe.directions.activations import layer_means

    texts = ["the cat sat", "a dog ran far away"]
    got = layer_means(tiny_llama, texts, layers=[1], positions="all")
    kept = layer_means(tiny_llama, texts, layers=[1], positions="all", exclude_sink=False)
    c = emprobe.collect(tiny_llama, texts, layers=[1], positions="all", reduce="tokens")
    assert c.token_index is not None
    first = c.token_index[:, 1] == 0
    assert torch.allclose(got.pooled[1], c.acts[1][~first].mean(0), atol=1e-5)
    assert torch.allclose(kept.pooled[1], c.acts[1].mean(0), atol=1e-5)
    assert got.counts.tolist() == [n - 1 for n in kept.counts.tolist()]
