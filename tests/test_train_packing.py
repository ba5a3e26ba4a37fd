"""Packing: examples packed into one row must not see each other (same per-example loss as alone),
rows respect sequence_len, and the collator never lets an example predict its neighbour's token."""

from __future__ import annotations

import random

import pytest
import torch

from tunewise.data import TokenizedExample
from tunewise.train import attention
from tunewise.train.loss import token_losses
from tunewise.train.packing import IGNORE, PaddingFreeCollator, RowDataset, pack_rows, split_eval, usable


def _example(rng: random.Random, n: int, prompt: int) -> TokenizedExample:
    ids = [rng.randrange(10, 49000) for _ in range(n)]
    labels = [IGNORE] * prompt + ids[prompt:]
    return TokenizedExample(input_ids=ids, labels=labels, truncated=False, n_trainable=n - prompt)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager", attention.NAME])
def test_packed_examples_do_not_attend_to_each_other(tiny_model, attn):
    """sdpa/eager see the restarting position_ids; tunewise's own attention (what training uses)
    sees the collator's example boundaries."""
    rng = random.Random(0)
    examples = [_example(rng, n, p) for n, p in ((17, 5), (9, 2), (30, 11), (4, 1))]
    attention.register()
    tiny_model.config._attn_implementation = attn
    collate = PaddingFreeCollator()
    with torch.no_grad():
        alone = [token_losses(tiny_model, collate([[ex]])) for ex in examples]
        packed = token_losses(tiny_model, collate([examples[:2], examples[2:]]))  # two rows -> one flat row
    expected = torch.cat(alone)
    assert packed.shape == expected.shape
    torch.testing.assert_close(packed, expected, rtol=1e-4, atol=1e-4)

    # Control: the same tokens with continuous positions (a plain causal mask) give different losses,
    # so the comparison above really detects cross-example attention.
    batch = collate([examples])
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    batch[attention.SEGMENTS_KEY] = ((0, batch["input_ids"].shape[1]),)
    with torch.no_grad():
        leaky = token_losses(tiny_model, batch)
    assert not torch.allclose(leaky, expected, rtol=1e-3, atol=1e-3)
    tiny_model.config._attn_implementation = "sdpa"


def test_collator_shifts_labels_within_each_example():
    a = TokenizedExample([1, 2, 3], [IGNORE, 2, 3], False, 2)
    b = TokenizedExample([4, 5], [IGNORE, 5], False, 1)
    batch = PaddingFreeCollator()([[a, b]])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # position 2 (last of a) must not predict 4 (first of b)
    assert batch["shift_labels"].tolist() == [[2, 3, IGNORE, 5, IGNORE]]
    assert batch[attention.SEGMENTS_KEY] == ((0, 3), (3, 5))


def test_segment_attention_refuses_masks_and_caches(tiny_model):
    q = torch.zeros(1, 4, 3, 8)
    with pytest.raises(RuntimeError, match="padding-free"):
        attention.segment_attention(tiny_model, q, q, q, torch.ones(1, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="KV cache"):
        attention.segment_attention(tiny_model, q[:, :, :1], q, q, None)


def test_pack_rows_fills_rows_without_overflow():
    rng = random.Random(1)
    lengths = [rng.randint(5, 200) for _ in range(500)]
    rows = pack_rows(lengths, 256)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    lower_bound = -(-sum(lengths) // 256)
    assert len(rows) <= lower_bound * 1.05 + 1  # near-optimal fill
    assert rows == pack_rows(lengths, 256)  # deterministic


def test_row_dataset_without_packing_is_one_example_per_row():
    rng = random.Random(2)
    examples = [_example(rng, n, 1) for n in (5, 6, 7)]
    assert [len(r) for r in RowDataset(examples, 64, packing=False)] == [1, 1, 1]
    assert len(RowDataset(examples, 64, packing=True)) == 1


def test_usable_and_split():
    assert not usable(TokenizedExample([1, 2], [IGNORE, IGNORE], False, 0))
    assert usable(TokenizedExample([1, 2], [IGNORE, 2], False, 1))
    train, held = split_eval(list(range(100)), 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert split_eval(list(range(100)), 0.1, seed=3) == (train, held)
