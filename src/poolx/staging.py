"""Directories written all or nothing: exports, Triton repositories and Ray outputs are written into a hidden
temporary sibling and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from poolx.errors import ExportError


@contextlib.contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """A hidden temporary sibling of `output` to write into. On success it replaces `output` (a previous one is
    removed only once the new one is in place, and put back if the swap is interrupted); on any failure or
    interrupt the temporary directory, and any parent directories made for it, are removed."""
    created = []
    parent = output.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp: Path | None = None
    old: Path | None = None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result is an ordinary directory
        if output.exists() or output.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
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
        if not output.exists():
            for directory in created:  # deepest first; only what was made here, and only if still empty
                with contextlib.suppress(OSError):
                    directory.rmdir()
