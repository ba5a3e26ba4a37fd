"""`tunewise data review`: example ids, the review log, export, the server's token, and the page in
a real headless browser (Debian's chromium driven by Selenium through chromedriver)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.data.review import (ReviewLog, ReviewServer, ReviewSession, default_log_path, example_id,
                                  export_reviewed, latest, load_examples, serve, support_spans)
from tunewise.errors import TunewiseError

CHUNK = ("Returns are accepted within 30 days. The warranty lasts 24 months from the date of delivery. "
         "Batteries are covered for 12 months.")
ROWS = [
    {"instruction": "How long is the warranty?", "input": "", "output": "The warranty lasts 24 months from delivery.",
     "provenance": {"document": "manual.md", "chunk_id": 3, "span": [0, len(CHUNK)], "chunk_text": CHUNK}},
    {"instruction": "Who pays return shipping?", "input": "", "output": "The customer pays it."},
    {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "How long are batteries covered?", "input": "", "output": "Batteries are covered for 12 months."},
    {"instruction": "Say hi", "input": "", "output": "Hi!"},
    {"instruction": "Name a colour", "input": "", "output": "Blue."},
]



def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


# A row as `tunewise data synth` writes it (OpenAI messages + provenance), then the other rows as chat.
_SUPPORT = [CHUNK.index("The warranty"), CHUNK.index(" Batteries")]
SYNTH_ROW = {"id": "syn-0d1e2f3a4b5c6d7e", **chat("How long is the warranty?", "The warranty lasts 24 months from delivery."),
             "provenance": {"document": "manual.md", "chunk_id": "manual.md#3", "heading": "Manual > Warranty",
                            "span": [120, 120 + len(CHUNK)], "chunk_hash": "sha256:" + hashlib.sha256(CHUNK.encode()).hexdigest(),
                            "chunk_text": CHUNK, "support": [_SUPPORT], "kind": "qa", "retrieval_rank": 1,
                            "grounding": [{"sentence": "The warranty lasts 24 months from delivery.", "lexical": 0.857,
                                           "embedding": 0.912, "missing_numbers": [], "supported": True, "chunk_span": _SUPPORT}]}}
CHAT_ROWS = [SYNTH_ROW] + [chat(r["instruction"] + (f"\n{r['input']}" if r["input"] else ""), r["output"]) for r in ROWS[1:]]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def pairs(tmp_path) -> Path:
    return write_rows(tmp_path / "pairs.jsonl", ROWS)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# ids and loading
# ---------------------------------------------------------------------------------------------


def test_ids_are_content_hashes_not_positions(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", ROWS)
    b = write_rows(tmp_path / "b.jsonl", [dict(reversed(list(r.items()))) for r in reversed(ROWS)])  # reordered rows and keys
    ids_a = [e.id for e in load_examples(a).examples]
    ids_b = [e.id for e in load_examples(b).examples]
    assert ids_a == list(reversed(ids_b))
    assert len(set(ids_a)) == len(ROWS) and all(len(i) == 16 for i in ids_a)
    assert example_id({"x": 1, "y": 2}) == example_id({"y": 2, "x": 1}) != example_id({"x": 1, "y": 3})


def test_ids_are_the_rows_own_id_else_a_hash_of_the_messages_only(tmp_path):
    with_own = write_rows(tmp_path / "own.jsonl", [SYNTH_ROW, {**chat("q", "a"), "id": 7}, {**chat("q2", "a2"), "id": "7-2"},
                                                   {**chat("q3", "a3"), "id": 7}])
    assert [e.id for e in load_examples(with_own).examples] == ["syn-0d1e2f3a4b5c6d7e", "7", "7-2", "7-3"]
    plain = write_rows(tmp_path / "plain.jsonl", [chat("q", "a"), {**chat("q", "a"), "score": 0.3, "provenance": {"x": 1}},
                                                  chat("q", "a!")])
    a, b, c = (e.id for e in load_examples(plain).examples)
    assert b == a + "-2" and c != a  # other keys do not make another example; a changed answer does
    assert load_examples(plain).examples[1].duplicate_of == a


def test_decisions_survive_a_synth_rerun_that_changes_provenance(tmp_path):
    p = write_rows(tmp_path / "pairs.jsonl", CHAT_ROWS)
    s = ReviewSession(p)
    ids = [e.id for e in s.dataset.examples]
    s.decide(ids[0], "accept")
    s.decide(ids[1], "reject")
    s.decide(ids[2], "edit", [{"role": "user", "content": "Translate to French\nGood morning"},
                              {"role": "assistant", "content": "Bonjour !"}])
    s.decide(ids[3], "accept")
    before = tmp_path / "before.jsonl"
    export_reviewed(s, before, "openai")
    # a rerun: the synth row's checks moved (rank, scores, request keys), other rows gained provenance
    # and scores, and the order changed; only row 5's answer is new
    rows = json.loads(json.dumps(CHAT_ROWS))
    rows[0]["provenance"].update(retrieval_rank=3, request_keys={"answer": "k2"}, judge={"verdict": "pass", "reason": "ok"})
    rows[0]["provenance"]["grounding"][0]["embedding"] = 0.801
    rows[1]["provenance"] = {"document": "returns.md", "chunk_id": "returns.md#0", "chunk_text": "The customer pays it."}
    rows[2]["score"] = 0.9
    rows[4]["messages"][1]["content"] = "Blue or red."
    write_rows(p, [rows[3], rows[2], rows[0], rows[1], rows[5], rows[4]])
    s2 = ReviewSession(p)
    assert sorted(e.id for e in s2.dataset.examples) == sorted(ids[:4] + [ids[5], s2.dataset.examples[5].id])
    assert s2.dataset.examples[5].id != ids[4]
    assert {i: s2.decisions[i]["decision"] for i in ids[:4]} == {ids[0]: "accept", ids[1]: "reject", ids[2]: "edit", ids[3]: "accept"}
    assert s2.stale == [] and s2.counts()["decided"] == 4
    after = tmp_path / "after.jsonl"
    export_reviewed(s2, after, "openai")
    assert sorted(map(json.dumps, read_jsonl(after))) == sorted(map(json.dumps, read_jsonl(before)))


def test_identical_rows_get_numbered_ids(tmp_path):
    ds = load_examples(write_rows(tmp_path / "d.jsonl", [ROWS[1], ROWS[2], ROWS[1], ROWS[1]]))
    ids = [e.id for e in ds.examples]
    assert ids[2] == ids[0] + "-2" and ids[3] == ids[0] + "-3"
    assert ds.examples[2].duplicate_of == ids[0] and ds.examples[0].duplicate_of is None


def test_loads_every_format_and_keeps_bad_rows_for_rejection(tmp_path):
    sharegpt = tmp_path / "s.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]))
    openai = write_rows(tmp_path / "o.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                                               {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": ""}]},
                                               {"messages": "not a list"}])
    with open(openai, "a") as f:
        f.write("{broken\n")
    s = load_examples(sharegpt)
    assert s.format == "sharegpt" and s.examples[0].source == "s.json: row 1"
    o = load_examples(openai)
    assert [e.error for e in o.examples] == [None, "empty response (assistant message at position 1)",
                                            "'messages' must be a list, got str"]
    assert o.examples[2].conversation is None and o.examples[2].raw == {"messages": "not a list"}
    assert len(o.unreadable) == 1 and o.unreadable[0].startswith("o.jsonl:4: malformed JSON")


# ---------------------------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------------------------


def test_log_appends_whole_fsynced_lines_and_survives_a_torn_line(tmp_path, monkeypatch):
    log = ReviewLog(tmp_path / "x.review.jsonl", "x.jsonl")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log.append({"id": "a", "decision": "accept"})
    assert len(synced) >= 1  # the line, before append returns
    n = len(synced)
    log.append({"id": "b", "decision": "reject"})
    assert len(synced) == n + 1
    lines = log.path.read_text().splitlines()
    assert json.loads(lines[0])["review_log"] == 1 and json.loads(lines[0])["dataset"] == "x.jsonl"
    with open(log.path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"id": "c", "deci')
    assert [e["id"] for e in log.read()] == ["a", "b"] and log.skipped_lines == [4]
    log.append({"id": "d", "decision": "accept"})
    assert [e["id"] for e in log.read()] == ["a", "b", "d"]  # the next entry is not glued to the torn one
    assert log.skipped_lines == [4]


def test_latest_decision_wins_and_undo_clears():
    entries = [{"id": "a", "decision": "accept"}, {"id": "b", "decision": "reject"}, {"id": "a", "decision": "edit", "messages": []},
               {"id": "b", "decision": "undo"}, {"id": "g1", "decision": "gold", "messages": [1]},
               {"id": "g1", "decision": "edit", "messages": [2]}, {"id": "g2", "decision": "gold", "messages": [3]},
               {"id": "g2", "decision": "reject"}, {"id": "g1", "decision": "reject"}, {"id": "g1", "decision": "undo"}]
    state, gold = latest(entries)
    assert state == {"a": {"id": "a", "decision": "edit", "messages": []}}
    assert list(gold) == ["g1", "g2"]
    assert gold["g1"]["decision"] == "gold" and gold["g1"]["messages"] == [2] and gold["g1"]["edited"]
    assert gold["g2"]["decision"] == "reject"


def test_decisions_resume_in_a_new_session_and_follow_rows_that_moved(pairs, tmp_path):
    before = pairs.read_bytes()
    s = ReviewSession(pairs)
    ids = [e.id for e in s.dataset.examples]
    s.decide(ids[0], "accept")
    s.decide(ids[1], "reject")
    assert s.first_undecided() == ids[2]
    s2 = ReviewSession(pairs)  # the server restarted
    assert s2.first_undecided() == ids[2] and s2.counts()["decided"] == 2
    write_rows(pairs, [ROWS[1], ROWS[5], ROWS[0]] + ROWS[2:5])  # rows moved: decisions follow the content
    s3 = ReviewSession(pairs)
    assert s3.decisions[ids[0]]["decision"] == "accept" and s3.decisions[ids[1]]["decision"] == "reject"
    assert s3.first_undecided() == ids[5]
    assert default_log_path(pairs) == tmp_path / "pairs.review.jsonl"
    write_rows(pairs, ROWS[1:])  # a row removed: its decision stays in the log but is not exported
    assert ReviewSession(pairs).stale == [ids[0]]
    write_rows(pairs, ROWS)
    assert pairs.read_bytes() == before


def test_server_refuses_to_start_when_the_log_cannot_be_written(pairs, tmp_path):
    (tmp_path / "afile").write_text("")
    s = ReviewSession(pairs, log=tmp_path / "afile" / "x.review.jsonl")
    with pytest.raises(TunewiseError, match="cannot write the review log"):
        serve(s)


def test_decide_validates(pairs):
    s = ReviewSession(pairs)
    eid = s.dataset.examples[0].id
    with pytest.raises(TunewiseError, match="no example with id"):
        s.decide("nope", "accept")
    with pytest.raises(TunewiseError, match="unknown decision"):
        s.decide(eid, "maybe")
    with pytest.raises(TunewiseError, match="empty response"):
        s.decide(eid, "edit", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}])
    with pytest.raises(TunewiseError, match="needs a role"):
        s.decide(eid, "edit", [{"role": "robot", "content": "q"}])
    with pytest.raises(TunewiseError, match="no assistant turn"):
        s.add_gold([{"role": "user", "content": "q"}])
    assert s.log.read() == []  # nothing invalid was written


def test_rows_training_refuses_can_only_be_rejected_or_fixed(tmp_path):
    p = write_rows(tmp_path / "o.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
                                          {"messages": 5}])
    s = ReviewSession(p)
    bad, unparsable = s.dataset.examples
    with pytest.raises(TunewiseError, match="edit the example to fix it"):
        s.decide(bad.id, "accept")
    with pytest.raises(TunewiseError, match="reject it"):
        s.decide(unparsable.id, "edit", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    s.decide(bad.id, "edit", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "fixed"}])
    s.decide(unparsable.id, "reject")
    out = tmp_path / "out.jsonl"
    export_reviewed(s, out, "openai")
    assert read_jsonl(out) == [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "fixed"}]}]


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def test_export_writes_exactly_the_kept_examples_in_each_format(pairs, tmp_path):
    s = ReviewSession(pairs)
    ids = [e.id for e in s.dataset.examples]
    s.decide(ids[0], "accept")
    s.decide(ids[1], "edit", [{"role": "user", "content": "Who pays return shipping?"},
                              {"role": "assistant", "content": "We do, always."}])
    s.decide(ids[2], "edit", [{"role": "user", "content": "Translate to French\nGood morning"},
                              {"role": "assistant", "content": "Bonjour !"}])
    s.decide(ids[3], "reject")
    s.decide(ids[4], "accept")
    s.decide(ids[4], "undo")
    g = s.add_gold([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."}])
    g2 = s.add_gold([{"role": "user", "content": "drop me"}, {"role": "assistant", "content": "x"}])
    s.decide(g2["id"], "reject")

    out = tmp_path / "acc.jsonl"
    res = export_reviewed(s, out, "alpaca")
    rows = read_jsonl(out)
    assert rows == [
        ROWS[0],
        {"instruction": "Who pays return shipping?", "input": "", "output": "We do, always."},
        {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour !"},  # split kept: user text untouched
        {"instruction": "Capital of France?", "input": "", "output": "Paris.", "system": "Be brief."},
    ]
    assert res.rows == 4 and res.counts["reject"] == 1 and res.counts["gold"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # atomic: no temp file left

    oa = tmp_path / "acc.openai.jsonl"
    res = export_reviewed(s, oa, "openai")
    assert read_jsonl(oa)[1] == {"messages": [{"role": "user", "content": "Who pays return shipping?"},
                                              {"role": "assistant", "content": "We do, always."}]}
    assert res.dropped and "provenance" in res.dropped[0][1]  # said, not silently lost
    sg = tmp_path / "acc.sharegpt.json"
    export_reviewed(s, sg, "sharegpt")
    assert json.loads(sg.read_text())[3] == {"conversations": [{"from": "human", "value": "Capital of France?"},
                                                                {"from": "gpt", "value": "Paris."}], "system": "Be brief."}
    with pytest.raises(TunewiseError, match="already exists"):
        export_reviewed(s, out, "alpaca")
    with pytest.raises(TunewiseError, match="is the input file"):
        export_reviewed(s, pairs, "alpaca", force=True)
    with pytest.raises(TunewiseError, match="review log"):
        export_reviewed(s, s.log.path, "alpaca", force=True)


def test_export_with_nothing_kept_says_so(pairs, tmp_path):
    with pytest.raises(TunewiseError, match="nothing to export"):
        export_reviewed(ReviewSession(pairs), tmp_path / "o.jsonl")


def test_cli_export_and_misuse(pairs, tmp_path):
    s = ReviewSession(pairs)
    s.decide(s.dataset.examples[2].id, "accept")
    runner = CliRunner()
    out = tmp_path / "a.jsonl"
    r = runner.invoke(app, ["data", "review", str(pairs), "--export", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 1 examples" in r.output and "(alpaca)" in r.output and "5 undecided" in r.output
    assert read_jsonl(out) == [ROWS[2]]
    r = runner.invoke(app, ["data", "review", str(pairs), "--to", "openai"])
    assert r.exit_code != 0 and "--export" in str(r.exception)


def test_damaged_log_entries_are_left_out_of_an_export_and_named(pairs, tmp_path):
    """A log line whose messages are not [{role, content}] (hand-edited, damaged) is skipped like an
    unreadable one; --export leaves it out and says which line, never a TypeError."""
    s = ReviewSession(pairs)
    s.decide(s.dataset.examples[2].id, "accept")
    with open(s.log.path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "gold-x", "decision": "gold", "messages": None}) + "\n")
        f.write(json.dumps({"id": s.dataset.examples[3].id, "decision": "edit", "messages": "oops"}) + "\n")
    s2 = ReviewSession(pairs)
    assert s2.log.skipped_lines == [3, 4]
    r = CliRunner().invoke(app, ["data", "review", str(pairs), "--export", str(tmp_path / "a.jsonl")])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "wrote 1 examples" in flat and "line(s) 3, 4" in flat and "unreadable review-log entry" in flat
    assert read_jsonl(tmp_path / "a.jsonl") == [ROWS[2]]


def test_cli_export_says_what_the_format_cannot_hold(tmp_path):
    p = write_rows(tmp_path / "pairs.jsonl", CHAT_ROWS)
    s = ReviewSession(p)
    for e in s.dataset.examples[:3]:
        s.decide(e.id, "accept")
    r = CliRunner().invoke(app, ["data", "review", str(p), "--export", str(tmp_path / "a.jsonl")])
    assert r.exit_code == 0, r.output
    assert "wrote 3 examples" in r.output and "(openai)" in r.output
    assert "(1 × extra keys id, provenance (OpenAI rows hold only messages and tools)) pairs.jsonl:1" in " ".join(r.output.split())


# ---------------------------------------------------------------------------------------------
# The source chunk
# ---------------------------------------------------------------------------------------------


def test_support_spans_highlight_the_supporting_sentence():
    spans = support_spans(CHUNK, "The warranty lasts 24 months from delivery.")
    assert [CHUNK[s:e] for s, e in spans] == ["The warranty lasts 24 months from the date of delivery."]
    assert support_spans(CHUNK, "Penguins live in Antarctica.") == []


def test_synth_rows_show_their_chunk_support_and_checks(tmp_path):
    p = write_rows(tmp_path / "pairs.jsonl", CHAT_ROWS)
    s = ReviewSession(p)
    assert [e["has_chunk"] for e in s.state()["examples"]] == [True] + [False] * 5
    view = s.chunk(s.dataset.examples[0].id)
    assert view["chunk_text"] == CHUNK and view["heading"] == "Manual > Warranty" and view["note"] is None
    assert [CHUNK[s:e] for s, e in view["highlights"]] == ["The warranty lasts 24 months from the date of delivery."]
    assert view["facts"] == ["kind: qa", "answer sentence 1: lexical 0.86 · embedding 0.91 · supported",
                             "the question retrieves its chunk at rank 1"]


def test_chunk_read_from_the_document_and_checked_against_its_hash(tmp_path):
    doc = "# Manual\n\n" + CHUNK + "\n"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "manual.md").write_text(doc, encoding="utf-8")
    start = doc.index(CHUNK)
    good = hashlib.sha256(CHUNK.encode()).hexdigest()
    rows = [{"instruction": "Battery cover?", "output": "Batteries are covered for 12 months.",
             "provenance": {"document": "manual.md", "chunk_id": "manual.md#0", "span": [start, start + len(CHUNK)], "chunk_hash": good}},
            {"instruction": "q", "output": "a", "provenance": {"document": "manual.md", "span": [start, start + 10], "chunk_hash": good}},
            {"instruction": "q2", "output": "a", "provenance": {"document": "gone.md", "span": [0, 5]}},
            {"instruction": "q3", "output": "Returns are accepted within 30 days.",
             "provenance": {"chunk_text": CHUNK, "support": [[0, 36]]}}]
    p = write_rows(tmp_path / "p.jsonl", rows)
    s = ReviewSession(p, docs=tmp_path / "docs")
    views = [s.chunk(e.id) for e in s.dataset.examples]
    assert views[0]["chunk_text"] == CHUNK and views[0]["note"] is None
    assert [CHUNK[s:e] for s, e in views[0]["highlights"]] == ["Batteries are covered for 12 months."]
    assert "changed since the pair was made" in views[1]["note"]
    assert views[2]["chunk_text"] is None and "gone.md was not found" in views[2]["note"]
    assert views[3]["highlights"] == [[0, 36]]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(pairs):
    srv = ReviewServer(ReviewSession(pairs))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def http(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_server_needs_the_token_and_a_local_host(server):
    base = f"http://127.0.0.1:{server.port}"
    assert server.server_address[0] == "127.0.0.1"
    assert http(base + "/")[0] == 403
    assert http(base + "/?token=wrong")[0] == 403
    assert http(base + "/api/state")[0] == 403
    assert http(base + "/api/decide", {"id": "x", "decision": "accept"})[0] == 403
    assert http(server.url, headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    status, page = http(server.url)
    assert status == 200 and b"tunewise review" in page
    status, state = http(f"{base}/api/state", headers={"X-Review-Token": server.token})
    assert status == 200 and json.loads(state)["counts"]["examples"] == len(ROWS)
    eid = server.session.dataset.examples[0].id
    assert http(f"{base}/api/chunk?id={eid}")[0] == 403
    status, chunk = http(f"{base}/api/chunk?id={eid}&token={server.token}")
    assert status == 200 and json.loads(chunk)["chunk"]["chunk_text"] == CHUNK
    assert http(f"{base}/api/chunk?id=nope&token={server.token}")[0] == 404


def test_server_writes_the_decision_before_answering(server):
    base = f"http://127.0.0.1:{server.port}"
    eid = server.session.dataset.examples[1].id
    hdr = {"X-Review-Token": server.token}
    status, body = http(f"{base}/api/decide", {"id": eid, "decision": "reject"}, hdr)
    assert status == 200 and json.loads(body)["counts"]["reject"] == 1
    assert [e["id"] for e in server.session.log.read()] == [eid]  # already on disk
    status, body = http(f"{base}/api/decide", {"id": eid, "decision": "edit", "messages": []}, hdr)
    assert status == 400 and "non-empty list" in json.loads(body)["error"]
    status, body = http(f"{base}/api/gold", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, hdr)
    assert status == 200 and json.loads(body)["entry"]["id"].startswith("gold-")


# ---------------------------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")


def start_server(pairs: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", "from tunewise.cli import main; main()", "data", "review", str(pairs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"})
    deadline = time.time() + 60
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Open http://" in line:
            return proc, line.split("Open ", 1)[1].strip()
    proc.kill()
    raise AssertionError("the server did not print its URL:\n" + "".join(lines))


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="chromium/chromedriver not installed (apt-get install -y chromium chromium-driver)")
def test_review_page_in_headless_chromium(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    pairs = write_rows(tmp_path / "pairs.jsonl", CHAT_ROWS)
    dataset_bytes = pairs.read_bytes()
    ids = [e.id for e in load_examples(pairs).examples]
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
              f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    proc, url = start_server(pairs)
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        wait = WebDriverWait(d, 15)
        body = lambda key: d.execute_script(f"return document.body.dataset.{key}")  # noqa: E731

        def ready():
            wait.until(lambda _: body("ready") == "1")

        def at(i):  # the page shows example i and every save has returned
            wait.until(lambda _: body("current") == ids[i] and body("pending") == "0")

        def keys(*k):
            ActionChains(d).send_keys(*k).perform()

        def status():
            return d.find_element(By.ID, "status").text

        d.get(url)
        ready()
        at(0)
        wait.until(lambda _: body("chunk") == ids[0])
        assert [m.text for m in d.find_elements(By.CSS_SELECTOR, "#chunk-text mark")] == [
            "The warranty lasts 24 months from the date of delivery."]
        assert d.find_element(By.ID, "chunk-meta").text == "manual.md · Manual > Warranty · chunk manual.md#3 · characters 120–249"
        assert "lexical 0.86 · embedding 0.91 · supported" in d.find_element(By.ID, "chunk-facts").text
        d.find_element(By.ID, "btn-accept").click()  # accept by button
        at(1)
        assert d.find_element(By.ID, "chunk").get_attribute("hidden") is not None  # no provenance: no chunk panel
        keys("e")  # edit by keyboard
        wait.until(lambda _: body("mode") == "edit")
        answer = d.find_element(By.CSS_SELECTOR, 'textarea[data-role="assistant"]')
        answer.clear()
        answer.send_keys("We pay return shipping.")
        ActionChains(d).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()  # save
        at(2)
        d.find_element(By.ID, "btn-reject").click()
        at(3)
        keys("a")
        at(4)
        assert d.find_element(By.ID, "progress-text").text.startswith("4 / 6 reviewed")

        d.refresh()  # reload mid-way
        ready()
        at(4)
        assert status() == "undecided"
        d.get(url)  # the bare URL (no #id) opens at the first undecided example
        ready()
        at(4)
        keys("k")
        at(3)
        assert status() == "accepted"
        keys("u")  # undo, then accept again
        wait.until(lambda _: status() == "undecided" and body("pending") == "0")
        keys("a")
        at(4)
        keys(Keys.ARROW_RIGHT)
        at(5)
        keys(Keys.ARROW_LEFT)
        at(4)
        keys("j")
        at(5)
        keys("k")
        at(4)
        keys("r")
        at(5)

        proc.send_signal(signal.SIGKILL)  # the server dies
        proc.wait(10)
        keys("a")  # the page says it could not save, and does not pretend it did
        wait.until(lambda _: "Not saved" in d.find_element(By.ID, "banner").text)
        assert status() == "undecided"

        proc, url2 = start_server(pairs)  # restarted: a new token
        assert url2 != url
        assert http(url2.split("?")[0] + "?" + url.split("?")[1])[0] == 403
        d.get(url2)
        ready()
        at(5)  # resumes at the first undecided example
        assert d.find_element(By.ID, "progress-text").text.startswith("5 / 6 reviewed (83%) · 2 accepted · 1 edited · 2 rejected")
        keys("g")  # a new example written by hand
        wait.until(lambda _: body("mode") == "gold")
        d.find_element(By.CSS_SELECTOR, 'textarea[data-role="user"]').send_keys("Capital of France?")
        d.find_element(By.CSS_SELECTOR, 'textarea[data-role="assistant"]').send_keys("Paris.")
        d.find_element(By.ID, "btn-save").click()
        wait.until(lambda _: body("mode") == "view" and body("pending") == "0" and status() == "written by hand")
        assert "1 written by hand" in d.find_element(By.ID, "progress-text").text
        keys("e")  # a hand-written example can be edited too
        wait.until(lambda _: body("mode") == "edit")
        answer = d.find_element(By.CSS_SELECTOR, 'textarea[data-role="assistant"]')
        answer.send_keys(Keys.BACKSPACE, ", France.")
        ActionChains(d).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        wait.until(lambda _: body("mode") == "view" and body("pending") == "0")
        assert d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant .text")[0].text == "Paris, France."
        keys("n")  # back to the one example left undecided
        at(5)
        shot = os.environ.get("TUNEWISE_REVIEW_SCREENSHOT")
        if shot:
            d.get(url2 + "#" + ids[0])
            ready()
            at(0)
            wait.until(lambda _: body("chunk") == ids[0])
            d.save_screenshot(shot)
    finally:
        d.quit()
        proc.terminate()
        proc.wait(10)

    out = tmp_path / "accepted.jsonl"
    r = subprocess.run([sys.executable, "-c", "from tunewise.cli import main; main()", "data", "review", str(pairs),
                        "--export", str(out), "--to", "openai", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["rows"] == 4

    assert read_jsonl(out) == [chat(ROWS[0]["instruction"], ROWS[0]["output"]),  # id and provenance: not OpenAI keys
                               chat("Who pays return shipping?", "We pay return shipping."),
                               chat(ROWS[3]["instruction"], ROWS[3]["output"]),
                               chat("Capital of France?", "Paris, France.")]
    assert pairs.read_bytes() == dataset_bytes  # the dataset is never modified
    final, _ = latest(ReviewLog(default_log_path(pairs)).read())
    assert {k: v["decision"] for k, v in final.items()} == {ids[0]: "accept", ids[1]: "edit", ids[2]: "reject",
                                                             ids[3]: "accept", ids[4]: "reject"}
