"""Chunking of Markdown, HTML and text documents (no model needed; fast)."""

from __future__ import annotations

from pathlib import Path

from tunewise.rag.chunking import (
    DocFile,
    chunk_text,
    count_tokens,
    html_sections,
    list_documents,
    markdown_sections,
    pack_section,
    read_document,
    text_sections,
)

POLICIES = Path(__file__).parent / "data" / "rag" / "policies"


def test_markdown_sections_keep_heading_path_and_ignore_code_fences():
    md = """---
title: front matter is not content
---
Intro paragraph before any heading.

# Leave
Top text.

## Earned leave
Eighteen days.

```python
# not a heading
x = 1
```

### Carry forward
Thirty days max.

## Sick leave
Ten days.

Setext title
============
Under setext.
"""
    sections = markdown_sections(md)
    paths = [" > ".join(s.heading) for s in sections]
    assert paths == ["", "Leave", "Leave > Earned leave", "Leave > Earned leave > Carry forward", "Leave > Sick leave", "Setext title"]
    assert sections[0].paragraphs == ["Intro paragraph before any heading."]
    earned = sections[2].paragraphs
    assert any("# not a heading" in p for p in earned), "fenced code stays inside its section"
    assert all("front matter" not in p for s in sections for p in s.paragraphs)


def test_html_sections_use_heading_tags_and_drop_scripts_and_nav():
    html = (POLICIES / "equipment.html").read_text()
    sections = html_sections(html)
    paths = [" > ".join(s.heading) for s in sections]
    assert paths == [
        "Equipment Policy",
        "Equipment Policy > Laptop choice and refresh",
        "Equipment Policy > Lost or stolen equipment",
        "Equipment Policy > Returning equipment",
    ]
    text = " ".join(p for s in sections for p in s.paragraphs)
    assert "analytics" not in text and "font-family" not in text and "Intranet home" not in text
    assert "inform IT within 24 hours" in text
    # character references are decoded (&#8377; is the rupee sign)
    coc = " ".join(p for s in html_sections((POLICIES / "code-of-conduct.html").read_text()) for p in s.paragraphs)
    assert "₹2,000" in coc


def test_text_sections_split_on_blank_lines():
    sections = text_sections("First para\nstill first.\n\n  \nSecond para.\n")
    assert len(sections) == 1 and sections[0].heading == []
    assert sections[0].paragraphs == ["First para\nstill first.", "Second para."]
    assert text_sections("  \n\n ") == []


def test_pack_section_caps_size_and_overlaps():
    paragraphs = [" ".join(f"p{i}w{j}" for j in range(30)) for i in range(6)]  # 6 paragraphs x 30 tokens
    chunks = pack_section(paragraphs, chunk_tokens=70, overlap=10)
    assert len(chunks) > 1
    assert all(count_tokens(c) <= 70 for c in chunks)
    for prev, nxt in zip(chunks, chunks[1:]):
        tail = prev.split()[-10:]
        assert nxt.split()[:10] == tail, "each chunk starts with the last 10 tokens of the previous one"
    # every paragraph word is somewhere
    joined = " ".join(chunks)
    assert all(f"p{i}w{j}" in joined for i in range(6) for j in range(30))


def test_long_paragraph_is_split_into_overlapping_windows():
    words = [f"w{i}" for i in range(500)]
    chunks = pack_section([" ".join(words)], chunk_tokens=100, overlap=20)
    assert all(count_tokens(c) <= 100 for c in chunks)
    assert chunks[0].split()[-20:] == chunks[1].split()[:20]
    assert chunks[-1].split()[-1] == "w499"
    no_overlap = pack_section([" ".join(words)], chunk_tokens=100, overlap=0)
    assert len(no_overlap) == 5 and " ".join(no_overlap).split() == words


def test_chunk_text_attaches_source_and_heading():
    chunks = chunk_text((POLICIES / "leave-policy.md").read_text(), "leave-policy.md", "markdown", 256, 32)
    headings = {c.heading for c in chunks}
    assert "Leave Policy > Earned leave > Carry forward and encashment" in headings
    assert all(c.source == "leave-policy.md" for c in chunks)


def test_list_documents_skips_hidden_and_reports_unsupported(tmp_path):
    (tmp_path / "a.md").write_text("# A\ntext")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.md").write_text("hidden")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text("<p>b</p>")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "gone.md").symlink_to(tmp_path / "missing-target.md")
    docs, skipped = list_documents(tmp_path)
    assert [d.rel for d in docs] == ["a.md", "sub/b.html"]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["image.png"].startswith("unsupported type .png")
    assert reasons["gone.md"].startswith("cannot read")


def test_read_document_rejects_binary_non_utf8_and_empty(tmp_path, monkeypatch):
    def doc(name: str, data: bytes) -> DocFile:
        p = tmp_path / name
        p.write_bytes(data)
        return DocFile(path=p, rel=name, size=len(data), mtime_ns=0)

    assert read_document(doc("ok.txt", "héllo ₹".encode()))[0] == "héllo ₹"
    crlf = read_document(doc("win.txt", b"first para\r\n\r\nsecond para\r\n"))[0]
    assert text_sections(crlf)[0].paragraphs == ["first para", "second para"]
    assert "binary" in read_document(doc("bin.md", b"abc\x00\x01\x02"))[1]
    assert "not UTF-8" in read_document(doc("latin.txt", "café".encode("latin-1")))[1]
    assert read_document(doc("empty.md", b"  \n"))[1] == "empty file"
    locked = doc("locked.md", b"# secret")

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    assert read_document(locked)[1] == "cannot read: Permission denied"
