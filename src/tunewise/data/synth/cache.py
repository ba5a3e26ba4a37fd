"""A request-keyed reply cache: one JSON line per completed request, appended and fsynced before
the reply is used, so a rerun makes no call for work already done and ``kill -9`` loses at most the
requests in flight. The key is the SHA-256 of the full request (endpoint, model, messages, sampling
parameters); the API key is never part of it."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from tunewise.errors import TunewiseError


def request_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def append_line(f, line: str) -> None:
    """Append one line to an open binary file and make it durable."""
    f.write(line.encode("utf-8") + b"\n")
    f.flush()
    os.fsync(f.fileno())


def truncate_torn_tail(path: Path) -> list[bytes]:
    """The complete lines of ``path``; a last line without its newline (a write cut by a kill) is
    cut off the file, so the next append starts on a fresh line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return data[:end].splitlines()


class ReplyCache:
    """``get(key)`` / ``put(key, record)``; records are dicts (reply text, usage, finish reason)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict] = {}
        for n, line in enumerate(truncate_torn_tail(self.path), 1):
            try:
                row = json.loads(line)
                self._entries[row["key"]] = row["reply"]
            except (ValueError, KeyError, TypeError) as e:
                raise TunewiseError(f"{self.path}:{n}: damaged cache line ({e})",
                                    "delete that line (or the file, to pay for the requests again)") from None
        self._lock = threading.Lock()
        self._file = self.path.open("ab")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def put(self, key: str, reply: dict) -> None:
        line = json.dumps({"key": key, "reply": reply}, ensure_ascii=False)
        with self._lock:
            append_line(self._file, line)
            self._entries[key] = reply

    def close(self) -> None:
        self._file.close()
