"""Read a documents folder and cut it into retrieval chunks that keep their heading path.

Markdown is split at headings, HTML at ``<h1>``–``<h6>`` (stdlib ``html.parser``), plain text at
blank lines. Inside a section, paragraphs are packed into chunks of at most ``chunk_tokens`` tokens,
each new chunk repeating the last ``overlap`` tokens of the one before so an answer that straddles
a boundary is still found whole. Tokens are counted as words and punctuation marks, a close
approximation of the word pieces the embedder sees.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdx"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
TEXT_SUFFIXES = {".txt", ".text", ".rst"}
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | HTML_SUFFIXES | TEXT_SUFFIXES

_TOKEN = re.compile(r"\w+|[^\w\s]")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass
class RawChunk:
    """One chunk before it is indexed: its text, the file it came from and its heading path."""

    text: str
    source: str
    heading: str


@dataclass
class Section:
    heading: list[str]
    paragraphs: list[str] = field(default_factory=list)


@dataclass
class SkippedFile:
    """A file in the documents folder that was not indexed, with the reason."""

    path: str
    reason: str


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


# ---------------------------------------------------------------- parsing into sections


def markdown_sections(text: str) -> list[Section]:
    """Split Markdown at ATX (``## x``) and setext (``x\\n===``) headings, ignoring fenced code."""
    sections = [Section(heading=[])]
    stack: list[tuple[int, str]] = []
    para: list[str] = []
    in_fence = False
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":  # YAML front matter is metadata, not content
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                lines = lines[end + 1 :]
                break

    def flush() -> None:
        if para:
            sections[-1].paragraphs.append("\n".join(para).strip())
            para.clear()

    def open_heading(level: int, title: str) -> None:
        flush()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title.strip()))
        sections.append(Section(heading=[t for _, t in stack]))

    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            para.append(line)
        elif in_fence:
            para.append(line)
        elif m := _ATX_HEADING.match(line):
            open_heading(len(m.group(1)), m.group(2))
        elif (
            line.strip()
            and not para
            and i + 1 < len(lines)
            and _SETEXT_UNDERLINE.match(lines[i + 1])
        ):
            open_heading(1 if lines[i + 1].strip().startswith("=") else 2, line)
            i += 1
        elif not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return [s for s in sections if s.paragraphs]


def text_sections(text: str) -> list[Section]:
    """Plain text: one section, paragraphs separated by blank lines."""
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    return [Section(heading=[], paragraphs=paragraphs)] if paragraphs else []


class _HTMLSectioner(HTMLParser):
    """Collect visible text from HTML, starting a section at every heading tag."""

    BLOCK = {
        "p", "div", "li", "ul", "ol", "table", "tr", "td", "th", "pre", "blockquote", "section",
        "article", "br", "dd", "dt", "dl", "figcaption", "header", "footer", "main", "aside",
    }
    HIDDEN = {"script", "style", "noscript", "template", "head", "svg", "nav"}
    HEADINGS = {f"h{n}": n for n in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections = [Section(heading=[])]
        self.stack: list[tuple[int, str]] = []
        self.buf: list[str] = []
        self.hidden_depth = 0
        self.heading_level: int | None = None
        self.heading_buf: list[str] = []

    def _flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
        if text:
            self.sections[-1].paragraphs.append(text)
        self.buf.clear()

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden_depth += 1
        elif tag in self.HEADINGS:
            self._flush()
            self.heading_level = self.HEADINGS[tag]
            self.heading_buf = []
        elif tag in self.BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden_depth = max(0, self.hidden_depth - 1)
        elif tag in self.HEADINGS and self.heading_level is not None:
            title = re.sub(r"\s+", " ", "".join(self.heading_buf)).strip()
            level = self.heading_level
            self.heading_level = None
            if title:
                while self.stack and self.stack[-1][0] >= level:
                    self.stack.pop()
                self.stack.append((level, title))
                self.sections.append(Section(heading=[t for _, t in self.stack]))
        elif tag in self.BLOCK:
            self._flush()

    def handle_data(self, data):
        if self.hidden_depth:
            return
        if self.heading_level is not None:
            self.heading_buf.append(data)
        else:
            self.buf.append(data)

    def close(self):
        super().close()
        self._flush()


def html_sections(text: str) -> list[Section]:
    parser = _HTMLSectioner()
    parser.feed(text)
    parser.close()
    return [s for s in parser.sections if s.paragraphs]


# ---------------------------------------------------------------- packing into chunks


def _split_long(tokens_text: str, chunk_tokens: int, overlap: int) -> list[str]:
    """Cut one over-long paragraph into word windows of ``chunk_tokens`` with ``overlap``."""
    words = tokens_text.split()
    out, start = [], 0
    while start < len(words):
        window: list[str] = []
        n = 0
        j = start
        while j < len(words) and (n + count_tokens(words[j]) <= chunk_tokens or not window):
            n += count_tokens(words[j])
            window.append(words[j])
            j += 1
        out.append(" ".join(window))
        if j >= len(words):
            break
        back, kept = 0, 0
        while back < len(window) - 1 and kept + count_tokens(window[-1 - back]) <= overlap:
            kept += count_tokens(window[-1 - back])
            back += 1
        start = j - back
    return out


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` tokens' worth of whole words of ``text``."""
    if overlap <= 0:
        return ""
    words = text.split()
    kept, n = [], 0
    for w in reversed(words):
        c = count_tokens(w)
        if n + c > overlap:
            break
        kept.append(w)
        n += c
    return " ".join(reversed(kept))


def pack_section(paragraphs: list[str], chunk_tokens: int, overlap: int) -> list[str]:
    """Greedily pack paragraphs into chunks of at most ``chunk_tokens``, with overlap between them."""
    pieces: list[str] = []
    for p in paragraphs:
        pieces.extend(_split_long(p, chunk_tokens, overlap) if count_tokens(p) > chunk_tokens else [p])
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        n = count_tokens(piece)
        if current and size + n > chunk_tokens:
            chunks.append("\n\n".join(current))
            carry = _tail(chunks[-1], overlap)
            # Only carry the overlap when it and the next piece still fit in one chunk.
            current, size = ([carry], count_tokens(carry)) if carry and count_tokens(carry) + n <= chunk_tokens else ([], 0)
        current.append(piece)
        size += n
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def chunk_text(text: str, source: str, kind: str, chunk_tokens: int = 256, overlap: int = 32) -> list[RawChunk]:
    """Chunks of one document's text; ``kind`` is ``markdown``, ``html`` or ``text``."""
    sections = {"markdown": markdown_sections, "html": html_sections, "text": text_sections}[kind](text)
    out = []
    for s in sections:
        heading = " > ".join(s.heading)
        for piece in pack_section(s.paragraphs, chunk_tokens, overlap):
            out.append(RawChunk(text=piece, source=source, heading=heading))
    return out


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


# ---------------------------------------------------------------- the documents folder


@dataclass
class DocFile:
    """A candidate document: path relative to the docs folder, size, mtime and (lazily) its hash."""

    path: Path
    rel: str
    size: int
    mtime_ns: int
    sha256: str = ""


def list_documents(docs_dir: Path) -> tuple[list[DocFile], list[SkippedFile]]:
    """Every supported file under ``docs_dir`` (hidden files and folders left out), sorted."""
    docs, skipped = [], []
    for path in sorted(docs_dir.rglob("*")):
        rel = path.relative_to(docs_dir).as_posix()
        if any(part.startswith(".") for part in path.relative_to(docs_dir).parts):
            continue
        if path.is_dir():
            continue
        if kind_of(path) is None:
            skipped.append(SkippedFile(rel, f"unsupported type {path.suffix or '(no suffix)'}"))
            continue
        try:
            st = path.stat()
        except OSError as e:
            skipped.append(SkippedFile(rel, f"cannot read: {e.strerror or e}"))
            continue
        docs.append(DocFile(path=path, rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return docs, skipped


def read_document(doc: DocFile) -> tuple[str | None, str | None]:
    """(text, None) for a readable UTF-8 document, or (None, reason) when it must be skipped.

    Also fills ``doc.sha256`` from the bytes read, so the fingerprint matches what was indexed.
    """
    try:
        data = doc.path.read_bytes()
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    doc.sha256 = hashlib.sha256(data).hexdigest()
    if b"\x00" in data[:8192]:
        return None, "binary file (contains NUL bytes)"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (bad byte at offset {e.start})"
    if not text.strip():
        return None, "empty file"
    return text.replace("\r\n", "\n").replace("\r", "\n"), None
