"""Loss masks must match the model's chat template exactly: assistant content and its end-of-turn
token trained, everything else masked. Checked on the real SmolLM2 tokenizer (ChatML)."""

from __future__ import annotations

import pytest

from tunewise.data import Conversation, Message, load_conversations, tokenize_conversation, tokenize_dataset
from tunewise.errors import TunewiseError


def _chatml_expected_labels(ids: list[int], tok) -> list[int]:
    """Independent token-level reference for ChatML: after `<|im_start|>assistant\\n`, train up to and
    including the next `<|im_end|>`."""
    start = tok.convert_tokens_to_ids("<|im_start|>")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] == start and ids[i + 1 : i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while j < len(ids) and ids[j] != end:
                labels[j] = ids[j]
                j += 1
            if j < len(ids):
                labels[j] = ids[j]
            i = j
        i += 1
    return labels


def _trained_text(ex, tok) -> str:
    return tok.decode([t for t, l in zip(ex.input_ids, ex.labels) if l != -100])


def test_single_turn_trains_response_and_end_token(smol_tokenizer):
    tok = smol_tokenizer
    conv = Conversation([Message("user", "What is 2+2?"), Message("assistant", "4, of course.")])
    ex = tokenize_conversation(conv, tok, 512)
    # Same ids as the template itself produces (default SmolLM2 system prompt included).
    ref = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"},
                                   {"role": "assistant", "content": "4, of course."}], tokenize=True)
    ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
    assert ex.input_ids == list(ref)
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(ex.input_ids)
    assert _trained_text(ex, tok) == "4, of course.<|im_end|>"
    assert ex.labels == _chatml_expected_labels(ex.input_ids, tok)
    assert ex.n_trainable == sum(1 for l in ex.labels if l != -100)
    assert not ex.truncated
    # the newline after <|im_end|> is not trained: the last token is <|im_end|>'s trailing "\n", masked
    assert ex.labels[-1] == -100 and ex.labels[-2] == tok.convert_tokens_to_ids("<|im_end|>")


def test_multi_turn_sharegpt_with_system_prompt(smol_tokenizer, tmp_path):
    tok = smol_tokenizer
    f = tmp_path / "chat.json"
    f.write_text(
        '[{"system": "Answer like a pirate.", "conversations": ['
        '{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Ahoy!"},'
        '{"from": "human", "value": "Where is the gold?"}, {"from": "gpt", "value": "Buried, matey.\\n"}]}]'
    )
    (conv,) = load_conversations(f)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    ex = tokenize_conversation(conv, tok, 512)
    text = tok.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\nAnswer like a pirate.<|im_end|>")
    assert "named SmolLM" not in text  # our system prompt replaces the default one
    assert ex.labels == _chatml_expected_labels(ex.input_ids, tok)
    assert _trained_text(ex, tok) == "Ahoy!<|im_end|>Buried, matey.\n<|im_end|>"


def test_train_on_modes_and_message_weights(smol_tokenizer):
    tok = smol_tokenizer
    msgs = [Message("user", "a"), Message("assistant", "first"), Message("user", "b"), Message("assistant", "second")]
    last = tokenize_conversation(Conversation(list(msgs)), tok, 512, train_on="last_assistant")
    assert _trained_text(last, tok) == "second<|im_end|>"
    everything = tokenize_conversation(Conversation(list(msgs)), tok, 512, train_on="all")
    assert everything.n_trainable == len(everything.input_ids)
    weighted = [Message("user", "a"), Message("assistant", "first", train=False), Message("user", "b"),
                Message("assistant", "second")]
    ex = tokenize_conversation(Conversation(weighted), tok, 512)
    assert _trained_text(ex, tok) == "second<|im_end|>"


def test_raw_text_is_all_trained_with_eos(smol_tokenizer):
    tok = smol_tokenizer
    ex = tokenize_conversation(Conversation([Message("text", "Plain words for pre-training.")]), tok, 512)
    assert ex.input_ids[-1] == tok.eos_token_id
    assert ex.labels == ex.input_ids
    assert tok.decode(ex.input_ids[:-1]) == "Plain words for pre-training."


def test_truncation_and_zero_trainable_is_reported(smol_tokenizer):
    tok = smol_tokenizer
    long_prompt = Conversation([Message("user", "word " * 400), Message("assistant", "ok")], source="f.jsonl:3")
    fine = Conversation([Message("user", "hi"), Message("assistant", "hello")], source="f.jsonl:4")
    ex = tokenize_conversation(long_prompt, tok, 100)
    assert ex.truncated and len(ex.input_ids) == 100 and ex.n_trainable == 0
    with pytest.raises(TunewiseError) as err:
        tokenize_dataset([long_prompt, fine], tok, 100, on_empty="error")
    assert "f.jsonl:3" in err.value.message and "no trainable tokens" in err.value.message
    with pytest.warns(UserWarning, match=r"1 example\(s\) have no trainable tokens .*f.jsonl:3"):
        both = tokenize_dataset([long_prompt, fine], tok, 100)
    assert [ex.n_trainable == 0 for ex in both] == [True, False]
    kept = tokenize_dataset([long_prompt, fine], tok, 100, on_empty="drop")
    assert len(kept) == 1 and kept[0].source == "f.jsonl:4"


def test_tool_calls_render_as_sharegpt_json_for_smollm2(smol_tokenizer, shared_data):
    tok = smol_tokenizer
    convs = load_conversations(shared_data / "glaive_toolcall_en_demo.json")
    conv = convs[0]
    ex = tokenize_conversation(conv, tok, 4096)
    trained = _trained_text(ex, tok)
    assert '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}<|im_end|>' in trained
    text = tok.decode(ex.input_ids)
    assert "search_recipes" in text.split("<|im_start|>user")[0]  # tool definitions shown in the system turn
    assert ex.labels == _chatml_expected_labels(ex.input_ids, tok)


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "identity.json", "glaive_toolcall_en_demo.json",
                                  "v1_sft_demo.jsonl"])
def test_shared_files_tokenize_exactly(smol_tokenizer, shared_data, name):
    tok = smol_tokenizer
    convs = load_conversations(shared_data / name)
    examples = tokenize_dataset(convs, tok, 16384, on_empty="error")  # one glaive example is 11.7k tokens
    assert len(examples) == len(convs)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for ex in examples[:200]:
        assert ex.labels == _chatml_expected_labels(ex.input_ids, tok), ex.source
    for ex in examples:
        assert ex.n_trainable > 0
        trained = [l for l in ex.labels if l != -100]
        assert trained[-1] == end, f"{ex.source}: last trained token is not <|im_end|>"
