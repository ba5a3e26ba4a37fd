"""Datasets: read every common fine-tuning format into one shape, tokenize with exact loss masks,
and check, convert, split, dedupe and fill dataset files.

Python users::

    from tunewise.data import load_conversations, tokenize_dataset
    from tunewise.models import load_tokenizer

    convs = load_conversations("train.jsonl")            # Alpaca, ShareGPT, OpenAI, messages, text
    examples = tokenize_dataset(convs, load_tokenizer("smollm2-135m"), sequence_len=2048)
"""

from tunewise.data.formats import FORMATS, iter_conversations, load_conversations, parse_mapping
from tunewise.data.tokenize import (
    TRAIN_ON,
    render_conversation,
    tokenize_conversation,
    tokenize_dataset,
)
from tunewise.data.types import Conversation, Message, TokenizedExample

__all__ = [
    "FORMATS",
    "TRAIN_ON",
    "Conversation",
    "Message",
    "TokenizedExample",
    "iter_conversations",
    "load_conversations",
    "parse_mapping",
    "render_conversation",
    "tokenize_conversation",
    "tokenize_dataset",
]
