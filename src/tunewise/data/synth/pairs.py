"""The synth run: for every chunk and kind, ask the teacher for ``per_chunk`` questions, then each
answer from that chunk alone; check every candidate locally (grounded, answerable, unique, and the
optional judge); append the kept pairs to the output in chunk order.

Durability: every reply is in the request-keyed cache (fsynced) before it is used, and the output is
appended and fsynced chunk by chunk in a fixed order. A rerun with the same options replays the
cache (no calls), checks that the lines already in the output are exactly the ones it would write,
and appends the rest, so an interrupted run resumes to the same final file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from tunewise.data.synth import prompts
from tunewise.data.synth.cache import ReplyCache, append_line, request_key, truncate_torn_tail
from tunewise.data.synth.chunks import DocChunk, load_chunks
from tunewise.data.synth.client import ChatClient, RequestFailed, estimate_tokens, max_prompt_tokens, public_endpoint
from tunewise.data.synth.cost import Budget, BudgetReached, Estimate, check_budget, resolve_pricing
from tunewise.data.synth.parse import ParseError, parse_answer, parse_questions, parse_verdict
from tunewise.data.synth.report import Funnel
from tunewise.errors import TunewiseError


@dataclass
class SynthOptions:
    docs_dir: Path
    out: Path
    endpoint: str
    model: str
    api_key_env: str | None = None
    per_chunk: int = 3
    kinds: tuple[str, ...] = ("qa",)
    concurrency: int = 4
    max_cost: float | None = None
    price_per_mtok: str | None = None
    usd_per_hour: float = 0.0
    judge: bool = False
    top_k: int = 4
    chunk_tokens: int = 256
    overlap: int = 32
    question_temperature: float = 0.7
    answer_temperature: float = 0.2
    top_p: float = 1.0
    question_max_tokens: int = 512
    answer_max_tokens: int = 512
    seed: int = 0
    force: bool = False
    index_dir: Path | None = None
    embedder: object = None  # None = all-MiniLM-L6-v2; a path or an Embedder
    max_attempts: int = 6
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic  # seconds, for --usd-per-hour
    progress: bool = True

    def sampling(self, stage: str) -> dict:
        if stage == "questions":
            return {"max_tokens": self.question_max_tokens, "temperature": self.question_temperature, "top_p": self.top_p, "seed": self.seed}
        return {"max_tokens": self.answer_max_tokens, "temperature": self.answer_temperature if stage == "answer" else 0.0,
                "top_p": self.top_p, "seed": self.seed}


def side_files(out: Path) -> dict[str, Path]:
    """The files a run writes beside ``pairs.jsonl``."""
    stem = out.with_suffix("")
    return {"funnel": Path(f"{stem}.funnel.json"), "rejected": Path(f"{stem}.rejected.jsonl"),
            "cache": Path(f"{stem}.cache.jsonl")}


def check_options(o: SynthOptions) -> None:
    if o.out.suffix.lower() != ".jsonl":
        raise TunewiseError(f"--out {o.out} must end in .jsonl", "e.g. --out pairs.jsonl")
    bad = [k for k in o.kinds if k not in prompts.KINDS]
    if bad or not o.kinds:
        raise TunewiseError(f"--kinds {','.join(o.kinds)}: unknown kind {','.join(bad) or '(none)'}",
                            f"use one or more of {','.join(prompts.KINDS)}")
    if o.per_chunk < 1 or o.concurrency < 1 or o.top_k < 1:
        raise TunewiseError("--per-chunk, --concurrency and --top-k must be at least 1", "e.g. --per-chunk 3")
    u = urlparse(o.endpoint)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise TunewiseError(f"--endpoint {o.endpoint!r} is not an http(s) URL",
                            "e.g. --endpoint http://127.0.0.1:8000/v1 or https://api.openai.com/v1")
    if o.max_cost is not None and o.max_cost <= 0:
        raise TunewiseError(f"--max-cost {o.max_cost} must be above 0", "e.g. --max-cost 5 (USD)")
    # the index's own chunking rule, here too so that a dry run refuses what the run would
    from tunewise.rag.index import check_chunking

    check_chunking(o.chunk_tokens, o.overlap, ("--chunk-tokens ", "--overlap "))


def api_key(o: SynthOptions) -> str | None:
    if not o.api_key_env:
        return None
    key = os.environ.get(o.api_key_env)
    if not key:
        raise TunewiseError(f"environment variable {o.api_key_env} (--api-key-env) is not set or empty",
                            f"export {o.api_key_env}=... before running (the key is read from there only)")
    return key


# ------------------------------------------------------------------ estimate (dry run)


def estimate(o: SynthOptions, chunks: list[DocChunk] | None = None) -> Estimate:
    """Requests, tokens and cost of a run, before any call: exact prompts for the question requests,
    the chunk prompt plus an 80-character question for answers; replies at an expected length
    (``25`` tokens a question, ``120`` an answer, ``40`` a verdict) and at most ``max_tokens``."""
    check_options(o)
    if chunks is None:
        chunks = load_chunks(o.docs_dir, o.chunk_tokens, o.overlap)[0]
    n_q = n_a = 0
    in_tok = out_exp = out_max = 0
    typical_q = "x" * 80
    for c in chunks:
        for kind in o.kinds:
            msgs = prompts.questions_messages(kind, o.per_chunk, c.text, c.source, c.heading)
            n_q += 1
            in_tok += estimate_tokens("".join(m["content"] for m in msgs))
            out_exp += min(o.question_max_tokens, 12 + 25 * o.per_chunk)
            out_max += o.question_max_tokens
            a_msgs = prompts.answer_messages(kind, typical_q, c.text, c.source, c.heading)
            a_in = estimate_tokens("".join(m["content"] for m in a_msgs))
            rounds = 2 if o.judge else 1
            n_a += o.per_chunk * rounds
            in_tok += o.per_chunk * a_in * rounds
            out_exp += o.per_chunk * (min(o.answer_max_tokens, 120) + (min(o.answer_max_tokens, 40) if o.judge else 0))
            out_max += o.per_chunk * o.answer_max_tokens * rounds
    pricing = resolve_pricing(o.model, o.endpoint, o.price_per_mtok, o.usd_per_hour)
    check_budget(pricing, o.max_cost)  # a --max-cost it could not enforce is refused, as the run refuses it
    usd_exp = pricing.tokens_usd(in_tok, out_exp) if pricing.known else None
    usd_max = pricing.tokens_usd(in_tok, out_max) if pricing.known else None
    return Estimate(n_q + n_a, in_tok, out_exp, out_max, usd_exp, usd_max, pricing)


# ------------------------------------------------------------------ generation (worker threads)


@dataclass
class Candidate:
    chunk: DocChunk
    kind: str
    question: str | None = None
    answer: str | None = None
    stage: str = ""  # where it was dropped ("" = still in)
    reason: str = ""
    detail: str = ""
    keys: dict = field(default_factory=dict)  # request keys: question / answer (/ judge)
    reasked: bool = False


@dataclass
class ChunkOutcome:
    chunk: DocChunk
    candidates: list[Candidate]
    stopped: bool = False  # the budget stopped it part-way


class _Stop(Exception):
    pass


class Generator:
    """Sends a chunk's requests (from a worker thread) through the cache, the budget and one re-ask."""

    def __init__(self, o: SynthOptions, client: ChatClient, budget: Budget):
        self.o, self.client, self.budget = o, client, budget
        self.tokens = {"input": 0, "output": 0}

    def ask(self, messages: list[dict], stage: str, parse):
        """(parsed value, [request keys], reasked) — one re-ask when the first reply is unreadable."""
        req = self.client.request(messages, **self.o.sampling(stage))
        text = self._complete(req)
        keys = [request_key(req)]
        try:
            return parse(text), keys, False
        except ParseError as first:
            req2 = self.client.request(prompts.reask_messages(messages, text, first.problem), **self.o.sampling(stage))
            keys.append(request_key(req2))
            text2 = self._complete(req2)
            try:
                return parse(text2), keys, True
            except ParseError as second:
                raise ParseError(f"{first.problem}; after one re-ask: {second.problem}") from None

    def _complete(self, req: dict) -> str:
        if self.client.cached(req) is not None:
            return self.client.complete(req).text
        reserved = self.budget.reserve(max_prompt_tokens(req["messages"]), req["max_tokens"])
        t0 = self.budget.clock()
        try:
            reply = self.client.complete(req)
        except BaseException:
            self.budget.release(reserved)
            raise
        self.budget.settle(reserved, reply.input_tokens, reply.output_tokens, self.budget.clock() - t0)
        self.tokens["input"] += reply.input_tokens
        self.tokens["output"] += reply.output_tokens
        return reply.text

    def chunk(self, c: DocChunk, stop_flag: list) -> ChunkOutcome:
        out = ChunkOutcome(c, [])
        n = self.o.per_chunk
        try:
            for kind in self.o.kinds:
                if stop_flag:
                    raise _Stop
                msgs = prompts.questions_messages(kind, n, c.text, c.source, c.heading)
                try:
                    questions, keys, reasked = self.ask(msgs, "questions", lambda t, k=kind: parse_questions(t, k, n))
                except ParseError as e:
                    out.candidates += [Candidate(c, kind, stage="parsed", reason="questions_unparseable", detail=e.problem)
                                       for _ in range(n)]
                    continue
                except RequestFailed as e:
                    out.candidates += [Candidate(c, kind, stage="generated", reason="request_failed", detail=str(e))
                                       for _ in range(n)]
                    continue
                out.candidates += [Candidate(c, kind, stage="parsed", reason="too_few_questions",
                                             detail=f"the teacher wrote {len(questions)} of {n}") for _ in range(n - len(questions))]
                for q in questions:
                    cand = Candidate(c, kind, question=q, keys={"questions": keys[-1]}, reasked=reasked)
                    out.candidates.append(cand)
                    if stop_flag:
                        cand.stage, cand.reason, cand.detail = "generated", "budget", "stopped before this answer"
                        continue
                    try:
                        answer, akeys, areasked = self.ask(prompts.answer_messages(kind, q, c.text, c.source, c.heading),
                                                           "answer", parse_answer)
                    except ParseError as e:
                        cand.stage, cand.reason, cand.detail = "parsed", "answer_unparseable", e.problem
                        continue
                    except RequestFailed as e:
                        cand.stage, cand.reason, cand.detail = "generated", "request_failed", str(e)
                        continue
                    cand.keys["answer"] = akeys[-1]
                    cand.reasked = cand.reasked or areasked
                    if answer is None:
                        cand.stage, cand.reason, cand.detail = "grounded", "teacher_declined", "the teacher said the chunk does not answer it"
                    cand.answer = answer
        except (BudgetReached, _Stop) as e:
            stop_flag.append(True)
            out.stopped = True
            for cand in out.candidates:
                if not cand.stage and cand.answer is None:
                    cand.stage, cand.reason, cand.detail = "generated", "budget", str(e) or "stopped by the budget"
            asked = {k: sum(1 for x in out.candidates if x.kind == k) for k in self.o.kinds}
            for kind in self.o.kinds:
                out.candidates += [Candidate(c, kind, stage="generated", reason="budget", detail=str(e) or "stopped by the budget")
                                   for _ in range(n - asked[kind])]
        return out

    def judge(self, cand: Candidate) -> tuple[bool, str, str | None]:
        c = cand.chunk
        msgs = prompts.judge_messages(cand.kind, cand.question, cand.answer, c.text, c.source, c.heading)
        verdict, keys, _ = self.ask(msgs, "judge", parse_verdict)
        return verdict[0], verdict[1], keys[-1]


# ------------------------------------------------------------------ the run


@dataclass
class SynthResult:
    out: Path
    funnel: "Funnel"
    files: dict[str, Path]
    complete: bool

    @property
    def kept(self) -> int:
        return self.funnel.kept


class ResumableOutput:
    """The output file, append-only. Lines already there (from an interrupted run) must be the
    ones this run writes, in order; they are checked, not written again."""

    def __init__(self, path: Path, identity: dict, force: bool):
        self.path = path
        if force and path.exists():
            path.unlink()
        self.existing = truncate_torn_tail(path)
        self.pos = 0
        if self.existing:
            try:
                first = json.loads(self.existing[0])["provenance"]
                theirs = {k: first.get(k) for k in identity}
            except (ValueError, KeyError, TypeError):
                theirs = None
            if theirs != identity:
                diff = ", ".join(f"{k}: {theirs.get(k)!r} → {v!r}" for k, v in identity.items() if theirs and theirs.get(k) != v)
                raise TunewiseError(f"{path} holds pairs from another run ({diff or 'not a synth output'})",
                                    "use --force to replace it, or give another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("ab")
        self.written = 0

    def write(self, line: str) -> None:
        if self.pos < len(self.existing):
            if self.existing[self.pos] != line.encode("utf-8"):
                raise TunewiseError(f"{self.path}:{self.pos + 1} differs from what this run writes there "
                                    "(the documents, the cache or the options changed since it was written)",
                                    "use --force to write it again from the cache, or give another --out")
            self.pos += 1
            return
        append_line(self._f, line)
        self.written += 1

    def close(self) -> None:
        self._f.close()


def pair_id(chunk_sha: str, kind: str, question: str, answer: str) -> str:
    h = hashlib.sha256(json.dumps([chunk_sha, kind, question, answer], ensure_ascii=False).encode())
    return "syn-" + h.hexdigest()[:16]


def _row(o: SynthOptions, cand: Candidate, pid: str, grounding, rank: int | None, judge: dict | None, identity: dict) -> str:
    c = cand.chunk
    prov = {
        **identity,
        "document": c.source, "chunk_id": c.chunk_id, "heading": c.heading,
        "span": list(c.char_span) if c.char_span else None, "chunk_hash": "sha256:" + c.sha256, "chunk_text": c.text,
        "support": [list(s) for s in dict.fromkeys(grounding.chunk_spans)], "kind": cand.kind, "request_keys": cand.keys, "reasked": cand.reasked,
        "grounding": [s.to_dict() for s in grounding.sentences], "retrieval_rank": rank, "judge": judge,
    }
    return json.dumps({"id": pid, "messages": [{"role": "user", "content": cand.question},
                                               {"role": "assistant", "content": cand.answer}],
                       "provenance": prov}, ensure_ascii=False)


def synthesize(o: SynthOptions, console=None) -> SynthResult:
    """Run synth with options ``o``; returns the funnel. Raises TunewiseError on bad input."""
    from tunewise.data.synth.filters import DuplicateFilter, GroundingCheck, answerable
    from tunewise.progress import progress
    from tunewise.rag.index import RagIndex

    check_options(o)
    key = api_key(o)
    chunks, skipped, doc_hashes = load_chunks(o.docs_dir, o.chunk_tokens, o.overlap)
    files = side_files(o.out)
    pricing = resolve_pricing(o.model, o.endpoint, o.price_per_mtok, o.usd_per_hour)
    budget = Budget(pricing, o.max_cost, clock=o.clock)
    identity = {"model": o.model, "endpoint": public_endpoint(o.endpoint),
                "prompt_template_sha256": prompts.template_hash(),
                "sampling": {s: o.sampling(s) for s in ("questions", "answer")}}
    output = ResumableOutput(o.out, identity, o.force)
    index = RagIndex.build(o.docs_dir, index_dir=o.index_dir, chunk_tokens=o.chunk_tokens, overlap=o.overlap,
                           embedder=o.embedder, progress=o.progress)
    grounding = GroundingCheck(index.embedder)
    dups = DuplicateFilter()
    cache = ReplyCache(files["cache"])
    # one limit for every request in flight, question/answer and judge alike (two pools feed it)
    client = ChatClient(o.endpoint, o.model, cache, api_key=key, max_attempts=o.max_attempts, sleep=o.sleep,
                        max_in_flight=o.concurrency)
    gen = Generator(o, client, budget)
    funnel = Funnel(chunks=chunks, documents=sorted(doc_hashes), skipped=skipped, judge=o.judge)
    rejected: list[dict] = []
    stop_flag: list = []
    started = time.perf_counter()
    complete = True

    def reject(cand: Candidate, stage: str, reason: str, detail: str) -> None:
        cand.stage, cand.reason, cand.detail = stage, reason, detail

    def commit(outcome: ChunkOutcome, judge_pool: ThreadPoolExecutor) -> None:
        c = outcome.chunk
        survivors = []
        for cand in outcome.candidates:
            if cand.stage:
                continue
            g = grounding.check(cand.answer, c.text)
            if not g.grounded:
                reject(cand, "grounded", "ungrounded", g.reason)
                continue
            support = [c.text[s:e] for s, e in g.chunk_spans]
            ok, rank = answerable(index, cand.question, (c.source, c.text), support, o.top_k)
            if not ok:
                reject(cand, "answerable", "not_answerable", f"the question does not retrieve its chunk in the top {o.top_k}")
                continue
            pid = pair_id(c.sha256, cand.kind, cand.question, cand.answer)
            dup = dups.check(pid, cand.question, cand.answer)
            if dup:
                reject(cand, "unique", "duplicate", dup)
                continue
            survivors.append((cand, pid, g, rank))
        verdicts: list = [None] * len(survivors)
        if o.judge and survivors:
            def run_judge(item):
                try:
                    return gen.judge(item[0])
                except ParseError as e:
                    return ("judge_unparseable", e.problem)
                except RequestFailed as e:
                    return ("request_failed", str(e))
                except BudgetReached as e:
                    stop_flag.append(True)
                    return ("budget", str(e))
            verdicts = list(judge_pool.map(run_judge, survivors))
        for (cand, pid, g, rank), v in zip(survivors, verdicts):
            judge = None
            if v is not None:
                if len(v) == 2:
                    reject(cand, "judged", v[0], v[1])
                    continue
                passed, why, jkey = v
                if not passed:
                    reject(cand, "judged", "judge_failed", why)
                    continue
                cand.keys["judge"] = jkey
                judge = {"verdict": "pass", "reason": why}
            output.write(_row(o, cand, pid, g, rank, judge, identity))
            funnel.keep(cand)
        for cand in outcome.candidates:
            funnel.add(cand)
            if cand.stage:
                rejected.append({"stage": cand.stage, "reason": cand.reason, "detail": cand.detail,
                                 "document": c.source, "chunk_id": c.chunk_id, "kind": cand.kind,
                                 "question": cand.question, "answer": cand.answer, "request_keys": cand.keys})

    try:
        with ThreadPoolExecutor(o.concurrency, thread_name_prefix="synth") as pool, \
                ThreadPoolExecutor(o.concurrency, thread_name_prefix="synth-judge") as judge_pool, \
                progress("synthesising", len(chunks), unit="chunk", enabled=o.progress, console=console) as prog:
            try:
                for outcome in pool.map(lambda ch: gen.chunk(ch, stop_flag), chunks):
                    commit(outcome, judge_pool)
                    complete = complete and not outcome.stopped
                    prog.update(advance=1, kept=f"{funnel.kept:,} kept", calls=f"{client.stats.calls:,} calls")
            except BaseException:
                stop_flag.append(True)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        output.close()
        client.close()
        cache.close()
    if stop_flag:
        complete = False
    if complete and output.pos < len(output.existing):
        raise TunewiseError(f"{o.out} has {len(output.existing) - output.pos} line(s) past what this run writes",
                            "use --force to write it again from the cache, or give another --out")
    complete = complete and not any(r["reason"] == "request_failed" for r in rejected)
    funnel.finish(
        complete=complete, seconds=time.perf_counter() - started, calls=client.stats.to_dict(),
        cost={"spent_usd_this_run": round(budget.spent_usd(), 6), "max_usd": o.max_cost,
              "tokens_this_run": dict(gen.tokens), "pricing": pricing.to_dict(), "budget_reached": budget.reached},
        options={"docs_dir": str(o.docs_dir), "out": str(o.out), "model": o.model, "endpoint": public_endpoint(o.endpoint),
                 "kinds": list(o.kinds), "per_chunk": o.per_chunk, "top_k": o.top_k, "judge": o.judge,
                 "chunk_tokens": o.chunk_tokens, "overlap": o.overlap, "concurrency": o.concurrency},
        files={k: str(v) for k, v in {"pairs": o.out, **files}.items()},
        index_dir=str(index.index_dir),
    )
    from tunewise.paths import atomic_write_text

    atomic_write_text(files["rejected"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))
    atomic_write_text(files["funnel"], json.dumps(funnel.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return SynthResult(o.out, funnel, files, complete)
