"""The checks every export must pass before tunewise calls it done.

Each check answers one way exports break in practice (docs/export.md names the peer issues): a merge
that changed nothing or changed the answers, a GGUF whose template, vocabulary, BOS or end-of-turn
tokens differ from the model that was trained, an Ollama Modelfile without the stop string, a
generation_config.json that lets vLLM run past the end of the turn. Checks take paths and plain
values, so a test can hand them a deliberately broken artifact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from tunewise.errors import TunewiseError

#: Largest |Δ logit| allowed between the merged model (as saved, computed in fp32) and the adapter on
#: its base: f32 keeps the merge exact up to float rounding; 16-bit storage rounds every weight.
LOGIT_TOLERANCE = {"f32": 1e-3, "bf16": 1.0, "f16": 0.25}
#: Greedy continuations of the GGUF in llama.cpp vs the merged model in transformers: least share of
#: prompts whose first MATCH_TOKENS tokens agree (llama.cpp's kernels are not bit-identical to
#: PyTorch's, and quantisation moves near-ties, so q8_0 is looser than f16/f32).
GGUF_AGREEMENT = {"f32": 0.8, "f16": 0.8, "bf16": 0.6, "q8_0": 0.4}
MATCH_TOKENS = 16
PROBE = "Hello, world! 123 ünïcödé 日本語 <tag> {\"json\": true}\n\tindent"


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    catches: str  # the failure it guards against

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


def failed(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


# ---------------------------------------------------------------------------------------------
# Hugging Face side
# ---------------------------------------------------------------------------------------------


def greedy_texts(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, stop_ids: list[int],
                 tick: Callable[[], None] | None = None) -> list[list[int]]:
    """Greedy new-token ids for each prompt (transformers, fp32); ``tick()`` after each."""
    import torch

    tick = tick or (lambda: None)

    outs = []
    with torch.inference_mode():
        for msgs in prompts:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 eos_token_id=stop_ids, pad_token_id=stop_ids[0])
            outs.append(out[0, ids.shape[1]:].tolist())
            tick()
    return outs


def check_merge(merged, reference, tokenizer, prompts, dtype: str, stop_ids: list[int], max_logit: float) -> Check:
    """The merged model answers exactly like the adapter on its base."""
    ref = greedy_texts(reference, tokenizer, prompts, 32, stop_ids)
    got = greedy_texts(merged, tokenizer, prompts, 32, stop_ids)
    same = sum(a == b for a, b in zip(ref, got))
    tol = LOGIT_TOLERANCE[dtype]
    ok = same == len(prompts) and max_logit <= tol
    return Check("merged = unmerged", ok,
                 f"greedy answers identical on {same}/{len(prompts)} held-out prompts (32 tokens); "
                 f"max |Δ logit| {max_logit:.2g} (tolerance {tol:g} for {dtype})",
                 "a merge that changes the model's answers (e.g. merging into a 4-bit base)")


def check_delta(norm: float | None, modules: int, zero: list[str], kind: str) -> Check:
    if kind == "model":
        return Check("weights changed", True, "not applicable: a plain model has no adapter to merge",
                     "a merge that silently changed nothing")
    ok = bool(norm) and modules > 0 and len(zero) < modules
    detail = f"‖ΔW‖ = {norm or 0:.4g} over {modules} adapted weight matrices"
    if zero:
        detail += f"; {len(zero)} unchanged (e.g. {zero[0]})"
    return Check("weights changed", ok, detail, "a merge that silently changed nothing")


def check_generation_config(path: Path, eot_ids: list[int]) -> Check:
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, json.JSONDecodeError) as e:
        return Check("generation_config stops", False, f"{path.name} unreadable: {e}", "generation that never stops")
    have = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    missing = sorted(set(eot_ids) - have)
    return Check("generation_config stops", not missing,
                 f"eos_token_id {sorted(have)}" + (f"; missing end-of-turn ids {missing}" if missing else
                                                   " holds every end-of-turn id"),
                 "vLLM/transformers generating past the end of the turn")


def check_vocab_rows(config_path: Path, tokenizer) -> Check:
    try:
        vocab = int(json.loads(config_path.read_text()).get("vocab_size") or 0)
    except (OSError, json.JSONDecodeError, ValueError):
        vocab = 0
    ok = vocab >= len(tokenizer)
    return Check("embedding rows", ok, f"vocab_size {vocab} for {len(tokenizer)} tokenizer tokens",
                 "added tokens lost or the embedding resized wrongly")


# ---------------------------------------------------------------------------------------------
# GGUF side
# ---------------------------------------------------------------------------------------------


def gguf_metadata(path: Path) -> dict:
    """The GGUF's key/value metadata (token arrays included)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:
        raise TunewiseError(f"{path} is not a readable GGUF file: {e}", "re-run the export") from None
    meta = {}
    for key, f in reader.fields.items():
        try:
            meta[key] = f.contents()
        except Exception:
            continue
    return meta


def check_gguf_metadata(meta: dict, tokenizer, eot_ids: list[int], chat_template: str) -> list[Check]:
    tokens = meta.get("tokenizer.ggml.tokens") or []
    hf = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    diff = [i for i, (a, b) in enumerate(zip(tokens, hf)) if a != b]
    vocab_ok = len(tokens) >= len(hf) and not diff
    vocab_detail = (f"{len(tokens)} GGUF tokens, ids equal to the HF tokenizer's {len(hf)}" if vocab_ok else
                    f"{len(tokens)} GGUF tokens vs {len(hf)}" + (f"; first difference at id {diff[0]}: "
                                                               f"{tokens[diff[0]]!r} vs {hf[diff[0]]!r}" if diff else ""))
    stops = {meta.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                   "tokenizer.ggml.eom_token_id") if meta.get(k) is not None}
    missing = sorted(set(eot_ids) - stops)
    tpl = meta.get("tokenizer.chat_template")
    return [
        Check("GGUF vocabulary", vocab_ok, vocab_detail, "vocabulary or added tokens lost in conversion"),
        Check("GGUF end-of-turn", not missing,
              f"eos/eot ids {sorted(stops)}" + (f"; missing {missing}" if missing else " cover every end-of-turn id"),
              "the model never stops in llama.cpp/Ollama"),
        Check("GGUF chat template", tpl == chat_template,
              "tokenizer.chat_template is the template used in training" if tpl == chat_template else
              ("no tokenizer.chat_template in the GGUF" if not tpl else "tokenizer.chat_template differs from training's"),
              "gibberish answers from a wrong or missing chat template"),
    ]


class LlamaCpp:
    """A GGUF loaded in llama.cpp through tunewise's inference engine (the xllamacpp wheel): greedy
    chat, llama.cpp's own tokenizer and its template rendering."""

    def __init__(self, gguf: Path, n_ctx: int = 2048):
        from tunewise.infer.llamacpp import LlamaCppEngine

        self.engine = LlamaCppEngine(str(gguf), n_parallel=1, ctx_per_request=n_ctx)

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.engine.tokenize(text, add_special=add_special)

    def apply_template(self, messages: list[dict]) -> str:
        return self.engine.render(messages)

    def chat(self, messages: list[dict], max_tokens: int) -> tuple[str, str, int]:
        """(text, finish_reason, completion tokens) for a greedy answer."""
        from tunewise.infer.types import Request

        done = self.engine.generate([Request(messages, max_tokens=max_tokens, temperature=0.0)])[0]
        return done.text, done.finish_reason, done.output_tokens

    def close(self) -> None:
        self.engine.close()


def check_gguf_runtime(llm: LlamaCpp, tokenizer, prompts, hf_greedy: list[list[int]], quant: str,
                       eot_ids: list[int], smoke: list[list[dict]], tick: Callable[[], None] | None = None) -> list[Check]:
    """Load-back checks in llama.cpp: tokenizer ids, one BOS, the template, greedy agreement, stopping;
    ``tick()`` after each answer llama.cpp gives."""
    tick = tick or (lambda: None)
    checks = []
    probe = PROBE + "".join(tokenizer.convert_ids_to_tokens(eot_ids)) + "".join(
        t for t in tokenizer.all_special_tokens if t not in PROBE)
    got, want = llm.tokenize(probe, add_special=False), tokenizer.encode(probe, add_special_tokens=False)
    checks.append(Check("GGUF tokenizer", got == want,
                        f"llama.cpp ids {'equal' if got == want else 'differ from'} the HF ids on a "
                        f"{len(want)}-token probe with special tokens", "a pre-tokenizer the converter got wrong"))

    from tunewise.export.template import SAMPLE_CONVERSATION

    rendered_hf = tokenizer.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False, add_generation_prompt=True)
    rendered_cpp = llm.apply_template(SAMPLE_CONVERSATION)
    checks.append(Check("llama.cpp template", rendered_cpp == rendered_hf,
                        "llama.cpp renders a multi-turn conversation with a system prompt exactly as in training"
                        if rendered_cpp == rendered_hf else "llama.cpp renders the conversation differently",
                        "wrong chat template in the GGUF"))
    ids_cpp = llm.tokenize(rendered_cpp, add_special=True)
    ids_hf = tokenizer(rendered_hf, add_special_tokens=False)["input_ids"]
    # llama.cpp's own chat path drops a BOS the template wrote when it adds one itself; runtimes that
    # tokenize the rendered prompt as is (Ollama, llama-cpp-python) do not: check that path too.
    ids_raw = llm.tokenize(rendered_hf, add_special=True)
    bos = tokenizer.bos_token_id
    double = bos is not None and any(len(ids) > 1 and ids[0] == bos and ids[1] == bos for ids in (ids_cpp, ids_raw))
    ok = ids_cpp == ids_hf and not double
    checks.append(Check("one BOS", ok,
                        "the prompt llama.cpp builds has the same ids as in training (no extra BOS)" if ok else
                        ("two BOS tokens at the start when the rendered prompt is tokenized (the GGUF adds a "
                         "BOS the template already writes)" if double else
                         f"prompt ids differ ({len(ids_cpp)} in llama.cpp vs {len(ids_hf)} in training)"),
                        "a double BOS after export"))

    agree = 0
    examples = []
    for msgs, ref in zip(prompts, hf_greedy):
        text, _, _ = llm.chat(msgs, MATCH_TOKENS)
        tick()
        cpp = tokenizer.encode(text, add_special_tokens=False)
        ref_text = tokenizer.decode([t for t in ref[:MATCH_TOKENS] if t not in eot_ids], skip_special_tokens=True)
        same = text.strip() == ref_text.strip() or cpp[:MATCH_TOKENS] == [t for t in ref if t not in eot_ids][:MATCH_TOKENS]
        agree += same
        if not same and len(examples) < 2:
            examples.append(f"{ref_text[:40]!r} vs {text[:40]!r}")
    need = GGUF_AGREEMENT.get(quant, 0.6)
    share = agree / max(1, len(prompts))
    checks.append(Check("GGUF answers = merged", share >= need,
                        f"greedy first {MATCH_TOKENS} tokens agree on {agree}/{len(prompts)} prompts "
                        f"(needed ≥ {need:.0%} for {quant})" + (f"; e.g. {examples[0]}" if examples else ""),
                        "a conversion that changed the model"))
    # An export that lost the end-of-turn token never stops on any prompt; a model that learned to
    # end its turns stops on most. Held-out prompts, greedy, up to 256 tokens each.
    ends = []
    for msgs in smoke:
        ends.append(llm.chat(msgs, 256))
        tick()
    stopped = [n for _, finish, n in ends if finish == "stop"]
    checks.append(Check("stops by itself", bool(stopped),
                        f"greedy answers ended by themselves on {len(stopped)}/{len(smoke)} held-out prompts"
                        + (f" (after {min(stopped)}–{max(stopped)} tokens)" if stopped else " within 256 tokens"),
                        "the end-of-turn token missing from the stop list: generation never ends"))
    return checks


# ---------------------------------------------------------------------------------------------
# Ollama
# ---------------------------------------------------------------------------------------------


def parse_modelfile(path: Path) -> dict:
    """FROM, TEMPLATE, SYSTEM and PARAMETER lines of a Modelfile (triple-quoted values supported)."""
    text = path.read_text(encoding="utf-8")
    out: dict = {"PARAMETER": []}
    i = 0
    lines = text.split("\n")
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                i += 1
                if i >= len(lines):
                    raise TunewiseError(f"{path}: unterminated \"\"\" in {word}", "close the triple quotes")
                body += "\n" + lines[i]
            value = body[: body.index('"""')]
        else:
            value = rest.strip()
        if word == "PARAMETER":
            key, _, val = value.partition(" ")
            val = val.strip()
            if val.startswith('"') and val.endswith('"'):
                val = json.loads(val)
            out["PARAMETER"].append((key, val))
        else:
            out[word] = value
        i += 1
    return out


def check_modelfile(path: Path, tokenizer, eot_strings: list[str], system: str | None) -> list[Check]:
    from tunewise.export.template import SAMPLE_CONVERSATION, render_ollama

    mf = parse_modelfile(path)
    stops = [v for k, v in mf["PARAMETER"] if k == "stop"]
    missing = [s for s in eot_strings if s not in stops]
    checks = [Check("Modelfile stop", not missing,
                    f"PARAMETER stop {stops}" + (f"; missing {missing}" if missing else " covers every end-of-turn string"),
                    "the model never stops in Ollama")]
    tpl = mf.get("TEMPLATE")
    ok, detail = False, "no TEMPLATE"
    if tpl is not None:
        system_line = mf.get("SYSTEM")
        for msgs in (SAMPLE_CONVERSATION, SAMPLE_CONVERSATION[1:]):
            # a conversation without a system message gets the Modelfile's SYSTEM from Ollama: the
            # training template must render it as if that system prompt had been sent (the shared
            # system prompt the run was trained with, or the template's own default)
            sent = msgs if msgs[0]["role"] == "system" or system_line is None else (
                [{"role": "system", "content": system_line}, *msgs])
            want = tokenizer.apply_chat_template(sent, tokenize=False, add_generation_prompt=True)
            got = render_ollama(tpl, msgs, system=system_line)
            ok = got == want
            if not ok:
                at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                detail = f"TEMPLATE renders differently at character {at}: {got[at:at + 30]!r} vs {want[at:at + 30]!r}"
                break
        else:
            detail = ("TEMPLATE (with SYSTEM) renders a multi-turn conversation exactly as the HF template, "
                      "with and without a system message")
    checks.append(Check("Modelfile template", ok, detail, "gibberish answers from a wrong Ollama TEMPLATE"))
    sampling = [k for k, _ in mf["PARAMETER"] if k != "stop"]
    checks.append(Check("Modelfile FROM", mf.get("FROM") == "./model.gguf" and not sampling,
                        f"FROM {mf.get('FROM')}" + (f"; sampling parameters set: {sampling}" if sampling else
                                                    ", no sampling parameters overridden"),
                        "a Modelfile pointing elsewhere or with surprising sampling defaults"))
    return checks


def report_dict(checks: Sequence[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def print_checks(checks: Sequence[Check], echo: Callable[[str], None] = print) -> None:
    for c in checks:
        echo(c.line())
