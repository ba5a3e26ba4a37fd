"""The fast paths of `data check` give exactly what the plain ones give: ChatML templates rendered
in Python equal Jinja's rendering, and MinHash signatures computed for a batch of texts equal
datasketch's, text by text."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tunewise.data.dedup import MAX_SHINGLES, DuplicateFinder, _crc, _mix, _A, _B, _LOW32, word_hashes
from tunewise.data.tokenize import CHATML_TEMPLATE, _Template

WORDS = ("the model {{ name }} {% raw %} <|im_end|> <|im_start|> naïve ΣΑΣ ΟΔΟΣ 東京 café don't 42 x_y "
         "\n \n\n \t '\" \\ } { ").split(" ")


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(WORDS) + rng.choice(["", " ", "\n"]) for _ in range(n))


def _conversations(rng: random.Random, n: int):
    roles = ["system", "user", "assistant", "tool"]
    for _ in range(n):
        k = rng.randint(0, 6)
        yield [{"role": rng.choice(roles) if rng.random() < 0.3 else ("user", "assistant")[i % 2],
                "content": _text(rng, rng.randint(0, 12))} for i in range(k)]


@pytest.mark.parametrize("which", ["model", "chatml"])
def test_python_chatml_rendering_equals_jinja(smol_tokenizer, which):
    tpl = _Template(smol_tokenizer, None if which == "model" else "chatml")
    assert tpl._plain is not None  # SmolLM2's template (default system turn) and plain ChatML
    rng = random.Random(7)
    for msgs in _conversations(rng, 400):
        for gen in (False, True):
            jinja = tpl._slow(msgs, None, gen) if msgs else tpl._fast(msgs, None, gen)  # (HF refuses [])
            assert tpl._plain(msgs, gen) == jinja, msgs


def test_other_templates_keep_jinja(smol_tokenizer):
    variant = CHATML_TEMPLATE.replace("message['content']", "message['content'] | trim")
    assert _Template(smol_tokenizer, variant)._plain is None


def _datasketch_signature(text: str) -> np.ndarray:
    from datasketch import MinHash

    m = MinHash(num_perm=64, seed=1, hashfunc=int, scheme="affine32")
    hashes = word_hashes(text)[: MAX_SHINGLES + 2]
    if len(hashes) >= 3:
        shingles = np.unique(_mix(hashes[:-2] * _A + hashes[1:-1] * _B + hashes[2:]) & _LOW32)
    elif len(hashes):
        shingles = np.unique(hashes & _LOW32)
    else:
        shingles = np.array([_crc(text)], dtype=np.uint64)
    m.update_batch(shingles.tolist())
    return m.hashvalues.astype(np.uint32)


def test_batched_minhash_equals_datasketch_text_by_text():
    rng = random.Random(3)
    texts = ["", " ", "!?", "one", "two words", "ΣΑΣ ΟΔΟΣ", "Σ", "a b c", "x" * 200_000]
    texts += [_text(rng, rng.choice([0, 1, 2, 3, 50, 499, 500, 501, 502, 503, 1500])) for _ in range(300)]
    texts += texts[:20]  # exact duplicates
    finder = DuplicateFinder()
    assert finder.add_texts(texts[:100]) == 0 and finder.add_texts(texts[100:]) == 100
    expected = np.stack([_datasketch_signature(t) for t in texts])
    assert np.array_equal(finder.signatures(), expected)
    one_by_one = DuplicateFinder()
    for t in texts:
        one_by_one.add_text(t)
    assert np.array_equal(one_by_one.signatures(), expected)
    assert finder._exact_of == one_by_one._exact_of and len(finder._exact_of) >= 20
