"""All user state lives under one home directory, moved with ``TUNEWISE_HOME``."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _default_mode(base: int) -> int:
    """``base`` (0o666 files, 0o777 dirs) less the process umask, as open()/mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def tunewise_home() -> Path:
    """The tunewise home: ``$TUNEWISE_HOME`` or ``~/.cache/tunewise``."""
    home = os.environ.get("TUNEWISE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tunewise"


def models_dir() -> Path:
    return tunewise_home() / "models"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success rename it into place.

    An interrupted write leaves only a ``.tmp-*`` directory that is ignored and cleaned up later,
    never a half-written ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    os.chmod(tmp, _default_mode(0o777))  # mkdtemp makes 0700; give the usual permissions
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Rename the finished directory ``new`` to ``target``, replacing an existing ``target``.

    The old copy is first renamed to a ``.tmp-old-*`` name (which clean-up code treats as debris),
    so ``target`` is never half-written: it is the old or the new directory.
    """
    if target.exists():
        old = target.with_name(f".tmp-old-{target.name}-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.fchmod(fd, _default_mode(0o666))  # mkstemp makes 0600; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
