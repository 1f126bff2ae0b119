"""Outputs written all or nothing, and nothing left behind.

Exports, Triton repositories (`staged_directory`) and embedding files (poolx.corpus's writer) are written into a
hidden temporary sibling of the output and renamed into place only when complete; any failure or interrupt removes
it. Two things make that hold outside Python's own exceptions:

- SIGTERM (sent by `timeout`, systemd, Docker, CI runners and `kill`) is turned into a KeyboardInterrupt by
  `interrupt_on_sigterm`, so it unwinds the same `with`/`finally` blocks as Ctrl-C: the CLI installs it.
- A run killed outright (SIGKILL, a power cut, the OOM killer) cannot clean up, so the next run on the same output
  does (`sweep_stale`): the temporary names carry the writer's process id (`.NAME.tmp-PID-XXXXXXXX`), and the
  writer holds an exclusive `flock` on its temporary file or directory for as long as it writes. A leftover is
  removed only when its lock is free (no process holds it open: the kernel drops the locks of a dead process) and
  its process id is not a running process here, so two runs on the same output never remove each other's files,
  even across containers that share the directory but not their process ids.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from poolx.errors import ExportError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, so nothing is swept
    fcntl = None  # type: ignore[assignment]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (see `interrupt_on_sigterm`)."""


_terminating = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _terminating
    if _terminating:  # a second SIGTERM while the first unwinds: let the cleanup finish
        return
    _terminating = True
    raise Terminated(f"terminated by signal {signum}")


def interrupt_on_sigterm() -> bool:
    """Make SIGTERM raise `Terminated` (a KeyboardInterrupt) in the main thread, so a terminated run cleans up as
    an interrupted one does (temporary files and directories removed, the output untouched). Further SIGTERMs
    while it unwinds are ignored, so the cleanup is not cut short; SIGKILL still ends the process at once. Call
    it once, early, from the main thread of a program (the CLI does); returns False (and changes nothing)
    elsewhere, or when SIGTERM is ignored (SIG_IGN, as `nohup` and some supervisors leave it)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


# ------------------------------------------------------------------------------------------------ temporary names


def temp_prefix(output: Path, kind: str = "tmp") -> str:
    """`.NAME.KIND-PID-`: the prefix of this process's temporaries for `output` (mkstemp/mkdtemp add a random
    part)."""
    return f".{output.name}.{kind}-{os.getpid()}-"


def hold(fd: int) -> None:
    """Take the exclusive lock that marks a temporary as in use (released when the process ends, however)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _unlocked(path: Path) -> bool:
    """Whether no process holds `path`'s lock (a file or a directory); False when it cannot be told."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the lock taken here
    return True


def stale(path: Path, pid: int) -> bool:
    """Whether the temporary `path`, made by process `pid`, is left over: its process is not running and no process
    holds its lock."""
    return not _alive(pid) and _unlocked(path)


def sweep_stale(output: Path) -> list[Path]:
    """Remove the temporaries that killed runs left beside `output` (`.NAME.tmp-PID-*`, and `.NAME.old-PID-*`,
    the previous output set aside while a new one is swapped in): those whose lock is free and whose process is
    not running. If a run was killed in the middle of a swap, so that `output` is missing and the set-aside
    previous output is there, the previous output is put back first. Returns what was removed; never raises."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.(tmp|old)-(\d+)-[^/]+")
    removed: list[Path] = []
    try:
        entries = list(output.parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = pattern.fullmatch(path.name)
        if not match or path.is_symlink() or not stale(path, int(match.group(2))):
            continue
        try:
            if path.is_dir():
                previous = path / "previous"
                if match.group(1) == "old" and (previous.exists() or previous.is_symlink()) and not (
                        output.exists() or output.is_symlink()):
                    os.replace(previous, output)
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------ directories


@contextlib.contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """A hidden temporary sibling of `output` to write into. On success it replaces `output` (a previous one is
    removed only once the new one is in place, and put back if the swap is interrupted); on any failure or
    interrupt the temporary directory, and any parent directories made for it, are removed. Temporaries of
    earlier killed runs on `output` are removed first (`sweep_stale`)."""
    created = []
    parent = output.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp: Path | None = None
    old: Path | None = None
    locks: list[int] = []
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(output)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(output), dir=output.parent))
        locks.append(os.open(tmp, os.O_RDONLY))
        hold(locks[-1])
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result is an ordinary directory
        if output.exists() or output.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(output, "old"), dir=output.parent))
            locks.append(os.open(old, os.O_RDONLY))
            hold(locks[-1])
            os.replace(output, old / "previous")
            try:
                os.replace(tmp, output)
            except BaseException:
                os.replace(old / "previous", output)
                raise
        else:
            os.replace(tmp, output)
    except OSError as e:
        raise ExportError(f"cannot write {output}: {e.strerror or e}") from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        for fd in locks:
            os.close(fd)
        if not output.exists():
            for directory in created:  # deepest first; only what was made here, and only if still empty
                with contextlib.suppress(OSError):
                    directory.rmdir()
