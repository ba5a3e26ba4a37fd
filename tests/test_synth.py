"""`tunewise data synth` against a fake OpenAI-compatible server started here: every kind of reply
ends in its funnel bucket; a kill -9 mid-run and a rerun give the same file with no repeated call;
dry run, budget, API key handling; the output passes `data check`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunewise.cli import main
from tunewise.data.synth import SynthOptions, synthesize
from tunewise.data.synth.client import backoff_s, retry_after_s
from tunewise.data.synth.filters import EMBEDDING_MIN, LEXICAL_ALONE, LEXICAL_WITH_EMBEDDING, GroundingCheck
from tunewise.data.synth.parse import ParseError, parse_answer, parse_questions
from tunewise.data.synth.prompts import render
from test_rag import HashingEmbedder  # a bag-of-words embedder (no model) for tests not about embedding support

DOCS = {
    "good.md": "# Earned leave\n\nEmployees accrue 18 days of earned leave per year at Nimbuswave. "
               "Earned leave is credited at 1.5 days at the start of each month.\n",
    "think.md": "# Parking\n\nThe basement parking garage opens at 7 am and closes at 11 pm on weekdays. "
                "Visitors must register their car number plate at the reception desk.\n",
    "reask.md": "# Laptops\n\nEvery engineer receives a laptop with 32 GB of memory on joining. "
                "Laptop repairs are handled by the IT helpdesk within two working days.\n",
    "malformed.md": "# Cafeteria\n\nThe cafeteria serves breakfast from 8 am to 10 am. "
                    "Lunch in the cafeteria is subsidised for all permanent staff.\n",
    "ungrounded.md": "# Gym\n\nThe office gym is open to employees from 6 am to 9 pm. "
                     "Lockers in the gym must be emptied every evening.\n",
    "duplicate.md": "# Travel\n\nTravel bookings for flights and trains are made through the travel desk portal. "
                    "Economy class is the default fare for domestic flights under five hours.\n",
    "ratelimit.md": "# Badges\n\nLost access badges are replaced by the security office for a fee of 500 rupees. "
                    "Temporary badges expire at midnight on the day they are issued.\n",
    "declined.md": "# Plants\n\nDesk plants are watered by the facilities team on Mondays and Thursdays. "
                   "Employees may bring their own potted plants to the office.\n",
}


def _sentences(chunk: str) -> list[str]:
    body = "\n".join(line for line in chunk.splitlines() if not line.startswith("#"))
    return [s.strip() for s in re.split(r"(?<=\.)\s+", body) if s.strip()]


class FakeTeacher:
    """Deterministic replies chosen by the document name in the prompt; counts calls per request."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.auth: list[str] = []
        self.rate_limited_once: set[str] = set()
        self.judged: list[str] = []  # the judge prompts received
        self.block_at: int | None = None
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.delay_s = 0.0  # a slow teacher, so that requests overlap
        self.in_flight = self.max_in_flight = 0

    def total(self) -> int:
        return sum(self.calls.values())

    def reply(self, body: dict) -> tuple[int, dict, str]:
        msgs = body["messages"]
        user = msgs[1]["content"]
        source = re.search(r"Passage \(from ([^,)]+)", user).group(1)
        chunk = user.split("<<<\n", 1)[1].split("\n>>>", 1)[0]
        sents = _sentences(chunk)
        reask = len(msgs) > 2
        tail = user.split(">>>")[-1]
        if '"verdict"' in tail:
            return 200, {}, self.verdict(source, user, reask)
        if '"questions"' in tail or '"instructions"' in tail:
            n = int(re.search(r"Write (\d+) different", user).group(1))
            if '"instructions"' in tail:  # the other order, so an instruction and a question differ
                qs = [f"Explain the rule that {s[0].lower()}{s[1:].rstrip('.')}" for s in reversed(sents)][:n]
            else:
                qs = [f"What does the policy say: {s.rstrip('.')}?" for s in sents][:n]
            if source == "malformed.md":
                return 200, {}, '{"questions": ["What time is breakfast?", '  # cut off: malformed JSON
            if source == "reask.md" and not reask:
                return 200, {}, "Sure! Here are questions: What memory? What repairs?"
            if source == "duplicate.md":
                qs = [qs[0], qs[0].upper(), qs[0].replace("What does", "What do")][:n]
            text = json.dumps({"instructions" if '"instructions"' in tail else "questions": qs})
            if source == "think.md":
                text = "<think>The user wants JSON {\"questions\": [...]}. Let me think.</think>\n```json\n" + text + "\n```"
            return 200, {}, text
        question = re.search(r"^(?:Question|Instruction): (.*)$", tail, re.M).group(1)
        if source == "ratelimit.md" and question not in self.rate_limited_once:
            self.rate_limited_once.add(question)
            return 429, {"Retry-After": "2"}, json.dumps({"error": {"message": "slow down", "type": "rate_limit"}})
        if source == "ungrounded.md":
            answer = "The gym offers free yoga classes with a personal trainer and 12 protein shakes a week."
        elif source == "declined.md":
            return 200, {}, json.dumps({"answer": None})
        elif source == "duplicate.md":
            answer = " ".join(sents)
        elif question.startswith("Explain the rule that "):
            stem = question.removeprefix("Explain the rule that ")
            answer = stem[0].upper() + stem[1:] + "."
        else:
            stem = question.removeprefix("What does the policy say: ").rstrip("?")
            answer = stem + "."
        text = json.dumps({"answer": answer})
        if source == "think.md":
            text = "<think>Only the passage. {not json}</think>```\n" + text + "\n```"
        return 200, {}, text

    def verdict(self, source: str, user: str, reask: bool) -> str:
        """The judge: fails an answer about leave being credited, cannot be read for reask.md (twice)."""
        self.judged.append(user)
        reply = user.split("\n\nReply: ", 1)[1].split("\n\nIs every statement", 1)[0]
        if source == "reask.md":
            return "Looks fine to me, it matches the passage."
        if "credited" in reply:
            return json.dumps({"verdict": "fail", "reason": "score 2/5: the reply repeats the passage instead of answering"})
        text = json.dumps({"verdict": "pass", "reason": "every statement is in the passage"})
        return f"<think>Check each statement.</think>{text}" if source == "think.md" else text

    def serve(self):
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
                with teacher.lock:
                    teacher.calls[key] = teacher.calls.get(key, 0) + 1
                    teacher.auth.append(self.headers.get("Authorization", ""))
                    n = teacher.total()
                    teacher.in_flight += 1
                    teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
                try:
                    if teacher.block_at is not None and n == teacher.block_at:
                        teacher.blocked.set()
                        teacher.release.wait(30)
                    time.sleep(teacher.delay_s)
                    status, headers, text = teacher.reply(body)
                finally:
                    with teacher.lock:
                        teacher.in_flight -= 1
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
                    data = json.dumps(payload).encode()
                else:
                    data = text.encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def teacher():
    t = FakeTeacher()
    server = t.serve()
    t.url = f"http://127.0.0.1:{server.server_port}/v1"
    yield t
    t.release.set()
    server.shutdown()


def make_docs(root: Path, names) -> Path:
    d = root / "docs"
    d.mkdir(parents=True)
    for name in names:
        (d / name).write_text(DOCS[name])
    return d


@pytest.fixture(scope="session")
def minilm():
    from tunewise.rag.embedder import default_embedder

    return default_embedder()


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


# ---------------------------------------------------------------------------------- units


def test_render_never_formats_user_text():
    text = 'JSON {"a": {"b": 1}} and {{chunk}} and %s and {0}'
    out = render("Passage: {{chunk}} / {{n}}", chunk=text, n=3)
    assert out == f"Passage: {text} / 3"  # the value's own {{chunk}} is not filled again


def test_parse_strips_reasoning_and_fences_and_reports_problems():
    assert parse_questions('<think>{"questions": ["no"]}</think>```json\n{"questions": ["A?", "B?"]}\n```', "qa", 3) == ["A?", "B?"]
    assert parse_questions('reasoning...</think>\n{"questions": ["A?"]}', "qa", 3) == ["A?"]
    assert parse_questions('Here you go: ["A?", "A?", "B?"] done', "qa", 1) == ["A?"]
    assert parse_answer('```\n{"answer": "Yes."}\n```') == "Yes."
    assert parse_answer('{"answer": null}') is None
    with pytest.raises(ParseError, match="malformed"):
        parse_questions('{"questions": ["A?", ', "qa", 2)
    # no JSON list, but a plain list, one a line (SmolLM2-135M's usual reply): read as the list
    small = ('Question 1: How long are invoices kept?\nQuestion 2: Who erases personal data?\n\nThe JSON object is:\n'
             '{"question": "How long are invoices kept?", "answer": "7 years"}\nQuestion 1: How long are invoices kept?')
    assert parse_questions(small, "qa", 3) == ["How long are invoices kept?", "Who erases personal data?"]
    assert parse_questions("<think>1. no</think>\n1. **Explain the notice period**\n2) List the exit documents\n- Compare A and B",
                           "instruction", 2) == ["Explain the notice period", "List the exit documents"]
    with pytest.raises(ParseError, match="no JSON"):  # prose is not a list: re-asked
        parse_questions("Sure! Here are questions: What memory? What repairs?", "qa", 2)
    with pytest.raises(ParseError, match="empty"):
        parse_answer("<think>still thinking, cut off")
    assert parse_answer("<think>hm</think> Invoices are kept for 7 years.") == "Invoices are kept for 7 years."  # prose
    with pytest.raises(ParseError, match="malformed"):
        parse_answer('{"answer": "Invoices are kept')


def test_retry_after_and_backoff():
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after_s({"retry-after": future}) <= 31
    import random

    rng = random.Random(0)
    delays = [backoff_s(a, 1.0, 60.0, rng) for a in range(8)]
    for a, d in enumerate(delays):  # exponential, jittered within [½, 1] of the step, capped
        step = min(60.0, 2 ** a)
        assert step / 2 <= d <= step
    assert len({round(d, 6) for d in delays}) == len(delays)


CHUNK = ("Employees accrue 18 days of earned leave per year, credited at 1.5 days at the start of each month. "
         "Earned leave must be applied for in the HR portal at least five working days in advance and needs "
         "your manager's approval. Up to 30 days of unused earned leave can be carried forward into the next "
         "year; anything above 30 days lapses on 31 December.")


def test_grounding_thresholds_on_examples(minilm):
    g = GroundingCheck(minilm)
    assert (LEXICAL_ALONE, LEXICAL_WITH_EMBEDDING, EMBEDDING_MIN) == (0.75, 0.6, 0.75)
    verbatim = g.check("Employees accrue 18 days of earned leave per year.", CHUNK)
    assert verbatim.grounded and verbatim.sentences[0].lexical == 1.0
    paraphrase = g.check("You build up 18 days of earned leave every year, with 1.5 days added at the beginning of each month.", CHUNK)
    s = paraphrase.sentences[0]
    assert paraphrase.grounded and s.lexical < LEXICAL_ALONE and s.embedding >= EMBEDDING_MIN  # saved by the embedding
    wrong_number = g.check("Employees accrue 20 days of earned leave per year.", CHUNK)
    assert not wrong_number.grounded and "20" in wrong_number.reason
    fabricated = g.check("Earned leave can be exchanged for extra pay at any time and managers may grant unlimited days.", CHUNK)
    assert not fabricated.grounded
    f = fabricated.sentences[0]
    assert f.lexical < LEXICAL_ALONE and (f.lexical < LEXICAL_WITH_EMBEDDING or f.embedding < EMBEDDING_MIN)
    mixed = g.check("Up to 30 days of unused earned leave can be carried forward. Employees may also donate leave to colleagues.", CHUNK)
    assert not mixed.grounded and "1 of 2 sentence" in mixed.reason
    # the supporting span points at the chunk sentence that carries the answer
    s, e = verbatim.chunk_spans[0]
    assert "18 days" in CHUNK[s:e]


# ---------------------------------------------------------------------------------- the funnel


def opts(docs, out, teacher, **kw) -> SynthOptions:
    base = dict(docs_dir=docs, out=out, endpoint=teacher.url, model="teacher-1", per_chunk=2, concurrency=3,
                index_dir=out.parent / "index", progress=False, sleep=lambda s: teacher_sleeps.append(s), top_k=2)
    base.update(kw)
    return SynthOptions(**base)


teacher_sleeps: list[float] = []


def test_every_reply_kind_ends_in_its_bucket(teacher, tmp_path, minilm):
    docs = make_docs(tmp_path, DOCS)
    out = tmp_path / "out" / "pairs.jsonl"
    teacher_sleeps.clear()
    res = synthesize(opts(docs, out, teacher, embedder=minilm))
    rejected = [json.loads(line) for line in (tmp_path / "out" / "pairs.rejected.jsonl").read_text().splitlines()]
    by_doc: dict[str, list[str]] = {}
    for r in rejected:
        by_doc.setdefault(r["document"], []).append(r["reason"])
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    kept_docs = sorted({k["provenance"]["document"] for k in kept})
    assert by_doc["malformed.md"] == ["questions_unparseable"] * 2
    assert by_doc["ungrounded.md"] == ["ungrounded"] * 2
    assert by_doc["declined.md"] == ["teacher_declined"] * 2
    assert by_doc["duplicate.md"] == ["duplicate"]  # the upper-cased copy of the first question
    assert kept_docs == ["duplicate.md", "good.md", "ratelimit.md", "reask.md", "think.md"]
    assert "good.md" not in by_doc and "think.md" not in by_doc and "reask.md" not in by_doc and "ratelimit.md" not in by_doc
    # 429 with Retry-After: 2 was waited out, once per question, and counted
    f = json.loads((tmp_path / "out" / "pairs.funnel.json").read_text())
    assert f["calls"]["rate_limited"] == 2 and teacher_sleeps.count(2.0) == 2
    stages = {s["stage"]: s for s in f["stages"]}
    assert f["candidates"] == 16 and stages["parsed"]["dropped"] == 2 and stages["grounded"]["reasons"] == {"teacher_declined": 2, "ungrounded": 2}
    assert f["kept"] == res.kept == len(kept) == stages["unique"]["count"]
    assert f["coverage"]["documents_with_pairs"] == 5 and f["coverage"]["documents"] == 8
    assert set(f["coverage"]["documents_without_pairs"]) == {"malformed.md", "ungrounded.md", "declined.md"}
    # provenance on every pair
    p = kept[0]["provenance"]
    for key in ("document", "chunk_id", "span", "chunk_hash", "chunk_text", "model", "endpoint", "prompt_template_sha256",
                "sampling", "support", "grounding", "retrieval_rank"):
        assert key in p, key
    doc_text = (docs / p["document"]).read_text()
    s, e = p["span"]
    assert doc_text[s:e] == p["chunk_text"] and p["chunk_hash"] == "sha256:" + hashlib.sha256(p["chunk_text"].encode()).hexdigest()
    assert any(k["provenance"]["reasked"] for k in kept if k["provenance"]["document"] == "reask.md")
    # a rerun makes no call and writes the same file
    before, calls = out.read_bytes(), teacher.total()
    again = synthesize(opts(docs, out, teacher, embedder=minilm))
    assert teacher.total() == calls and out.read_bytes() == before and again.kept == res.kept


def test_not_answerable_question_is_dropped(teacher, tmp_path):
    docs = make_docs(tmp_path, ["good.md", "think.md", "reask.md"])
    teacher_reply = teacher.reply

    def off_topic(body):  # questions about parking, asked of the laptop chunk (answers still grounded)
        status, headers, text = teacher_reply(body)
        user = body["messages"][1]["content"]
        if "from reask.md" in user and '"questions"' in user.split(">>>")[-1]:
            text = json.dumps({"questions": ["When does the basement parking garage open and close for visitors?"]})
        if "from reask.md" in user and "Question: When does" in user:
            text = json.dumps({"answer": "Every engineer receives a laptop with 32 GB of memory on joining."})
        return status, headers, text

    teacher.reply = off_topic
    out = tmp_path / "pairs.jsonl"
    synthesize(opts(docs, out, teacher, embedder=HashingEmbedder(), per_chunk=1, top_k=1))
    rejected = [json.loads(line) for line in (tmp_path / "pairs.rejected.jsonl").read_text().splitlines()]
    assert [(r["document"], r["reason"]) for r in rejected] == [("reask.md", "not_answerable")]


def test_judge_sees_the_chunk_and_what_it_fails_is_counted(teacher, tmp_path):
    from io import StringIO

    from rich.console import Console

    from tunewise.data.synth.report import print_funnel

    names = ["good.md", "think.md", "reask.md"]
    docs = make_docs(tmp_path, names)
    out = tmp_path / "pairs.jsonl"
    res = synthesize(opts(docs, out, teacher, embedder=HashingEmbedder(), judge=True))
    # every pair that passed the local checks went to the judge (reask.md's twice: one re-ask), with its chunk
    assert len(teacher.judged) == 2 * 3 + 2
    for prompt in teacher.judged:
        name = re.search(r"Passage \(from ([^,)]+)", prompt).group(1)
        assert DOCS[name].split("\n\n", 1)[1].strip() in prompt and "Reply: " in prompt
    rejected = [json.loads(line) for line in (tmp_path / "pairs.rejected.jsonl").read_text().splitlines()]
    assert [(r["document"], r["stage"], r["reason"]) for r in rejected] == [
        ("good.md", "judged", "judge_failed"), ("reask.md", "judged", "judge_unparseable"), ("reask.md", "judged", "judge_unparseable")]
    assert rejected[0]["detail"] == "score 2/5: the reply repeats the passage instead of answering"
    assert "credited" in rejected[0]["answer"] and "after one re-ask" in rejected[1]["detail"]
    f = json.loads((tmp_path / "pairs.funnel.json").read_text())
    judged = f["stages"][-1]
    assert judged["stage"] == "judged" and judged["dropped"] == 3 and judged["reasons"] == {"judge_failed": 1, "judge_unparseable": 2}
    assert judged["count"] == f["kept"] == res.kept == 3
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(k["provenance"]["judge"] == {"verdict": "pass", "reason": "every statement is in the passage"} for k in kept)
    assert all("judge" in k["provenance"]["request_keys"] for k in kept)
    buf = StringIO()
    print_funnel(res.funnel, Console(file=buf, width=200))
    assert re.search(r"judged\s*│\s*3\s*│\s*3\s*│ judge_failed 1, judge_unparseable 2", buf.getvalue())
    calls = teacher.total()  # a rerun asks the judge nothing again
    assert synthesize(opts(docs, out, teacher, embedder=HashingEmbedder(), judge=True)).kept == 3 and teacher.total() == calls


def test_instruction_kind_end_to_end(teacher, tmp_path, capsys, smol_tokenizer_dir):
    docs = make_docs(tmp_path, ["good.md", "think.md"])
    out = tmp_path / "pairs.jsonl"
    code, stdout, _ = run_cli(["data", "synth", str(docs), "--out", str(out), "--endpoint", teacher.url, "--model", "teacher-1",
                               "--kinds", "qa,instruction", "--per-chunk", "1", "--index", str(tmp_path / "idx"), "--json"], capsys)
    f = json.loads(stdout)
    assert code == 0 and f["candidates"] == 2 * 2 * 1 and f["kept"] == 4 and f["options"]["kinds"] == ["qa", "instruction"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = [(r["provenance"]["document"], r["provenance"]["kind"], r["messages"][0]["content"].split(" ")[0]) for r in rows]
    assert got == [("good.md", "qa", "What"), ("good.md", "instruction", "Explain"),
                   ("think.md", "qa", "What"), ("think.md", "instruction", "Explain")]
    inst = rows[1]
    assert inst["messages"][1]["content"] == "Earned leave is credited at 1.5 days at the start of each month."
    assert inst["provenance"]["grounding"][0]["supported"] and inst["provenance"]["retrieval_rank"] >= 1
    code, stdout, _ = run_cli(["data", "check", str(out), "--model", str(smol_tokenizer_dir), "--json"], capsys)
    report = json.loads(stdout)
    assert code == 0 and report["examples"] == 4 and report["n_errors"] == 0


def test_output_passes_data_check_and_nothing_kept_exits_1(teacher, tmp_path, capsys, minilm, smol_tokenizer_dir):
    docs = make_docs(tmp_path, ["good.md", "think.md"])
    out = tmp_path / "pairs.jsonl"
    code, stdout, _ = run_cli(["data", "synth", str(docs), "--out", str(out), "--endpoint", teacher.url,
                               "--model", "teacher-1", "--per-chunk", "2", "--index", str(tmp_path / "idx")], capsys)
    assert code == 0 and "kept" in stdout and "coverage: 2/2 chunks" in stdout
    code, stdout, _ = run_cli(["data", "check", str(out), "--model", str(smol_tokenizer_dir), "--json"], capsys)
    report = json.loads(stdout)
    assert code == 0 and report["examples"] == 4 and report["n_errors"] == 0
    bad = make_docs(tmp_path / "b", ["malformed.md", "ungrounded.md"])
    code, stdout, err = run_cli(["data", "synth", str(bad), "--out", str(tmp_path / "none.jsonl"), "--endpoint", teacher.url,
                                 "--model", "teacher-1", "--index", str(tmp_path / "idx2")], capsys)
    assert code == 1 and "no pair was kept" in err and "questions_unparseable" in stdout and "ungrounded" in stdout


# ---------------------------------------------------------------------------------- cost


def test_concurrency_bounds_every_request_in_flight_judge_included(teacher, tmp_path):
    """--concurrency N: at most N requests at the endpoint at once, though questions, answers and
    the judge come from two thread pools."""
    teacher.delay_s = 0.05
    docs = make_docs(tmp_path, ["good.md", "think.md", "reask.md"])
    res = synthesize(opts(docs, tmp_path / "pairs.jsonl", teacher, embedder=HashingEmbedder(), judge=True,
                          concurrency=2))
    assert res.kept > 0 and teacher.judged  # the judge ran beside generation
    assert teacher.max_in_flight == 2  # used, and never exceeded


def test_credentials_in_the_endpoint_are_never_shown(teacher, tmp_path, capsys):
    """A key in the URL (user:password, or a query parameter) appears in no output or error."""
    docs = make_docs(tmp_path, ["good.md"])
    url = teacher.url.replace("http://", "http://user:sk-in-url-123@") + "?api-key=sk-in-query-456"
    code, stdout, err = run_cli(["data", "synth", str(docs), "--out", str(tmp_path / "p.jsonl"), "--endpoint", url,
                                 "--model", "teacher-1", "--dry-run"], capsys)
    assert code == 0 and "127.0.0.1" in stdout and "sk-in" not in stdout + err
    # the endpoint refuses the key: the error names the endpoint without it, and nothing on disk holds it
    teacher.reply = lambda body: (401, {}, json.dumps({"error": {"message": "bad key", "type": "auth"}}))
    code, stdout, err = run_cli(["data", "synth", str(docs), "--out", str(tmp_path / "p.jsonl"), "--endpoint", url,
                                 "--model", "teacher-1", "--index", str(tmp_path / "idx")], capsys)
    assert code == 1 and "HTTP 401" in err and "127.0.0.1" in err and "sk-in" not in stdout + err
    for f in tmp_path.rglob("*"):
        assert not f.is_file() or b"sk-in" not in f.read_bytes(), f


def test_dry_run_estimates_and_sends_nothing(teacher, tmp_path, capsys):
    docs = make_docs(tmp_path, ["good.md", "think.md", "reask.md"])
    code, stdout, _ = run_cli(["data", "synth", str(docs), "--out", str(tmp_path / "p.jsonl"), "--endpoint", teacher.url,
                               "--model", "teacher-1", "--per-chunk", "3", "--dry-run", "--json",
                               "--price-per-mtok", "1,2"], capsys)
    est = json.loads(stdout)
    assert code == 0 and teacher.total() == 0 and not (tmp_path / "p.jsonl").exists()
    assert est["requests"] == 3 * (1 + 3)
    assert est["usd_max"] == pytest.approx((est["input_tokens"] * 1 + est["output_tokens_max"] * 2) / 1e6)
    code, stdout, _ = run_cli(["data", "synth", str(docs), "--out", str(tmp_path / "p.jsonl"), "--endpoint",
                               "https://api.openai.com/v1", "--model", "gpt-4o-mini", "--dry-run"], capsys)
    assert code == 0 and "genai-prices" in stdout and "12 requests" in stdout and "$" in stdout
    # what the run would refuse, the dry run refuses too (it estimated them before)
    for bad, needle in ((["--chunk-tokens", "0"], "--chunk-tokens 0 is too small"),
                        (["--chunk-tokens", "20", "--overlap", "50"], "--overlap 50 must be"),
                        (["--max-cost", "1"], "--max-cost needs a price")):
        code, stdout, err = run_cli(["data", "synth", str(docs), "--out", str(tmp_path / "p.jsonl"), "--endpoint",
                                     teacher.url, "--model", "teacher-1", "--dry-run", *bad], capsys)
        assert code == 1 and needle in " ".join(err.split()) and "Traceback" not in err, (bad, err)


def test_budget_reservation_bounds_the_real_prompt_in_any_language(smol_tokenizer):
    """--max-cost reserves an upper bound of the prompt's tokens: never below what the real tokenizer
    counts, in Chinese, Hindi or emoji, where four characters a token undercounts several times."""
    from tunewise.data.synth.client import estimate_tokens, max_prompt_tokens

    def count(msgs):
        text = smol_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])

    for text in ("员工每年享有九天事假，出差须经部门负责人批准。" * 20, "कर्मचारियों को हर साल नौ दिन की छुट्टी मिलती है। " * 20,
                 "🙂🚀📈 " * 60, "Nine days of casual leave a year. " * 20):
        msgs = [{"role": "system", "content": "Answer from the passage."}, {"role": "user", "content": text}]
        real = count(msgs)
        assert 10 < real <= max_prompt_tokens(msgs), text[:10]
    cjk = [{"role": "user", "content": "员工每年享有九天事假。" * 20}]
    real = count(cjk)
    assert estimate_tokens(cjk[0]["content"]) < real / 2  # what was reserved before: far too little


def test_budget_is_a_hard_limit_and_rerun_resumes(teacher, tmp_path):
    docs = make_docs(tmp_path, ["good.md", "think.md", "reask.md"])
    out = tmp_path / "pairs.jsonl"
    # each request reserves its worst case whatever the language: its prompt's UTF-8 bytes (≈ 650 here; a
    # byte-level token covers at least one byte) + 512 max_tokens, × $1/M ≈ $0.00116, and costs 120 tokens
    # ($0.00012) when it is settled: $0.0013 lets one or two through, never all nine
    budget = 0.0013
    o = opts(docs, out, teacher, embedder=HashingEmbedder(), concurrency=1, max_cost=budget, price_per_mtok="1,1")
    res = synthesize(o)
    f = json.loads((tmp_path / "pairs.funnel.json").read_text())
    assert not res.complete and f["cost"]["budget_reached"] and f["cost"]["spent_usd_this_run"] <= budget
    assert 1 <= teacher.total() <= 3 and any(s["reasons"].get("budget") for s in f["stages"])
    partial = out.read_bytes()
    res2 = synthesize(opts(docs, out, teacher, embedder=HashingEmbedder(), concurrency=1))
    assert res2.complete and out.read_bytes().startswith(partial) and res2.kept == 6
    assert max(teacher.calls.values()) == 1  # nothing asked twice


def test_per_hour_pricing_of_a_local_endpoint(teacher, tmp_path, capsys):
    docs = make_docs(tmp_path, ["good.md", "think.md", "reask.md"])
    base = ["data", "synth", str(docs), "--out", str(tmp_path / "p.jsonl"), "--endpoint", teacher.url, "--model", "teacher-1",
            "--per-chunk", "2", "--index", str(tmp_path / "idx")]
    code, stdout, _ = run_cli(base + ["--dry-run", "--usd-per-hour", "2.5"], capsys)
    flat = " ".join(stdout.split())
    assert code == 0 and "cost: $2.50 per hour the run takes" in flat and "local endpoint, $2.5/h" in flat
    assert "$0.0000" not in flat  # not a zero cost with an hourly price beside it
    code, stdout, _ = run_cli(base + ["--dry-run", "--usd-per-hour", "2.5", "--json"], capsys)
    est = json.loads(stdout)
    assert est["requests"] == 9 and est["usd_max"] == 0.0 and est["pricing"]["usd_per_hour"] == 2.5
    # a budget on a local endpoint without a per-hour price could never stop anything: refused
    code, _, err = run_cli(base + ["--max-cost", "1"], capsys)
    assert code == 1 and "--usd-per-hour" in " ".join(err.split()) and teacher.total() == 0
    # the running time is charged: every request takes 6 minutes on this clock, at $1/h that is $0.10 each
    now = [0.0]
    reply = teacher.reply

    def slow(body):
        now[0] += 360
        return reply(body)

    teacher.reply = slow
    out = tmp_path / "pairs.jsonl"
    res = synthesize(opts(docs, out, teacher, embedder=HashingEmbedder(), concurrency=1, usd_per_hour=1.0, max_cost=0.35,
                          clock=lambda: now[0]))
    f = json.loads((tmp_path / "pairs.funnel.json").read_text())
    # the 4th request would pass $0.35 if it takes as long as the longest so far: not sent
    assert teacher.total() == 3 and not res.complete and f["cost"]["budget_reached"]
    assert f["cost"]["spent_usd_this_run"] == pytest.approx(0.3) and f["cost"]["pricing"]["usd_per_hour"] == 1.0
    assert f["stages"][0]["reasons"] == {"budget": 4} and res.kept == 2
    res2 = synthesize(opts(docs, out, teacher, embedder=HashingEmbedder(), concurrency=1))  # no budget: resumes
    assert res2.complete and res2.kept == 6 and max(teacher.calls.values()) == 1


def test_api_key_only_from_env_and_never_written(teacher, tmp_path, monkeypatch, capsys):
    docs = make_docs(tmp_path, ["good.md"])
    out = tmp_path / "pairs.jsonl"
    args = ["data", "synth", str(docs), "--out", str(out), "--endpoint", teacher.url, "--model", "teacher-1",
            "--api-key-env", "SYNTH_TEST_KEY", "--index", str(tmp_path / "idx")]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "SYNTH_TEST_KEY" in err and teacher.total() == 0
    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-secret-123456")
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and set(teacher.auth) == {"Bearer sk-secret-123456"}
    assert "sk-secret" not in stdout + err
    for f in tmp_path.glob("pairs*"):
        assert b"sk-secret" not in f.read_bytes(), f


# ---------------------------------------------------------------------------------- kill -9


SCRIPT = r"""
import sys
from pathlib import Path
from test_rag import HashingEmbedder
from tunewise.data.synth import SynthOptions, synthesize

docs, out, url = sys.argv[1:4]
synthesize(SynthOptions(docs_dir=Path(docs), out=Path(out), endpoint=url, model="teacher-1", per_chunk=2,
                        concurrency=1, index_dir=Path(out).parent / "index", progress=False,
                        embedder=HashingEmbedder()))
print("finished")
"""


def test_kill_9_then_rerun_gives_the_same_file_without_repeated_calls(teacher, tmp_path):
    names = ["good.md", "think.md", "reask.md", "declined.md", "duplicate.md"]
    docs = make_docs(tmp_path, names)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), str(Path(__file__).parent)])}

    def run(out: Path):
        return subprocess.run([sys.executable, str(script), str(docs), str(out), teacher.url], env=env,
                              capture_output=True, text=True, timeout=120)

    ref = tmp_path / "ref" / "pairs.jsonl"
    done = run(ref)
    assert done.returncode == 0, done.stderr
    unique_requests = len(teacher.calls)
    teacher.calls.clear()

    out = tmp_path / "killed" / "pairs.jsonl"
    teacher.block_at = 9  # the 9th request hangs: chunks 1-2 are written, chunk 3 is in flight
    proc = subprocess.Popen([sys.executable, str(script), str(docs), str(out), teacher.url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert teacher.blocked.wait(90), proc.stderr.read() if proc.poll() is not None else "no 9th request"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    teacher.release.set()
    teacher.block_at = None
    partial = out.read_bytes()
    assert partial and ref.read_bytes().startswith(partial) and partial != ref.read_bytes()
    again = run(out)
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == ref.read_bytes()
    assert len(teacher.calls) == unique_requests
    repeated = {k: n for k, n in teacher.calls.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= 1  # at most the request in flight at the kill


# ---------------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_synth_through_tunewise_serve_on_the_embedded_model(embedded_model, tmp_path, minilm):
    """The real path: `tunewise serve` (llama.cpp engine) on SmolLM2-135M as the teacher, 2 small
    documents, one question each, short replies. A 135M model writes weak pairs; the
    run must still finish and the funnel must say, for every candidate, the stage and reason it was
    dropped at (or that it was kept)."""
    from rich.console import Console

    from tunewise.data.synth.report import STAGES, print_funnel
    from tunewise.infer import open_engine
    from tunewise.serve import Limits, ServerThread, create_app

    docs = make_docs(tmp_path, ["good.md", "think.md"])
    out = tmp_path / "pairs.jsonl"
    # one thread: on a shared box llama.cpp's spinning threads stall when the cores are busy (96 tokens
    # took 55 s with 2 threads at load 8 on 2 cores, 2.9 s with 1)
    engine = open_engine(embedded_model, engine="llama.cpp", threads=1)
    try:
        with ServerThread(create_app(engine, "smollm2-135m", limits=Limits(max_tokens_limit=256))) as srv:
            o = SynthOptions(docs_dir=docs, out=out, endpoint=srv.url + "/v1", model="smollm2-135m", per_chunk=1,
                             concurrency=2, index_dir=tmp_path / "index", progress=False, embedder=minilm,
                             question_max_tokens=96, answer_max_tokens=96)
            res = synthesize(o)
    finally:
        engine.close()
    print_funnel(res.funnel, Console(width=120))
    f = json.loads((tmp_path / "pairs.funnel.json").read_text())
    assert res.complete and f["candidates"] == 2 and f["calls"]["failed"] == 0 and f["calls"]["calls"] >= 2
    dropped = sum(s["dropped"] for s in f["stages"])
    assert dropped + f["kept"] == f["candidates"] and f["stages"][-1]["count"] == f["kept"]
    rejected = [json.loads(line) for line in (tmp_path / "pairs.rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == dropped and all(r["stage"] in STAGES and r["reason"] and r["detail"] for r in rejected)
    for s in f["stages"]:  # each stage's count of reasons is the rejected rows it dropped
        assert s["reasons"] == dict(Counter(r["reason"] for r in rejected if r["stage"] == s["stage"]))
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == f["kept"] and all(k["provenance"]["grounding"] for k in kept)
