"""Interrupted work leaves nothing (issue 14, item 6), with real processes and real signals: SIGTERM is handled as
Ctrl-C (`poolx.staging.interrupt_on_sigterm`), so `poolx embed` and staged directories (`poolx export`, Triton
repositories) remove their temporaries; what a SIGKILLed run leaves is removed by the next run on the same output,
and only when its owner is gone (`poolx.staging.sweep_stale`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from poolx.staging import staged_directory, sweep_stale

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

# The CLI as the console script runs it (`main` installs the SIGTERM handler).
CLI = "import sys; from poolx.cli import main; sys.argv[0] = 'poolx'; main()"


def wait_for(predicate, what: str, process: subprocess.Popen, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before {what}: {process.stderr.read()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no {what} within {timeout} s")


def temporaries(directory: Path, name: str, pid: int | None = None) -> list[Path]:
    prefix = f".{name}.tmp-" + (f"{pid}-" if pid is not None else "")
    return [p for p in directory.iterdir() if p.name.startswith(prefix)]


def test_embed_terminated_cleans_up_and_a_killed_runs_file_is_removed_by_the_next(bert_mean, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"text number {i} about topic {i % 13}\n" for i in range(200_000)))
    out = tmp_path / "out.npy"
    command = [sys.executable, "-c", CLI, "embed", str(bert_mean), "-i", str(corpus), "-o", str(out),
               "--provider", "cpu", "--threads", "1"]

    killed = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    debris = wait_for(lambda: temporaries(tmp_path, out.name, killed.pid), "temporary file", killed)
    killed.kill()  # SIGKILL: no cleanup can run
    killed.communicate(timeout=30)
    assert all(p.exists() for p in debris)  # what a killed run leaves

    terminated = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: temporaries(tmp_path, out.name, terminated.pid), "temporary file", terminated)
    assert not any(p.exists() for p in debris)  # removed by the next run on the same output
    terminated.send_signal(signal.SIGTERM)
    _, stderr = terminated.communicate(timeout=30)
    assert terminated.returncode == 143 and "terminated; nothing was left half-written" in stderr, stderr
    assert "Traceback" not in stderr and "nothing was left half-written" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


STAGE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from poolx.staging import interrupt_on_sigterm, staged_directory
    interrupt_on_sigterm()
    try:
        with staged_directory(Path(sys.argv[1])) as tmp:
            (tmp / "model.onnx").write_bytes(b"0" * 1000)
            print("staged", flush=True)
            time.sleep(60)
    except KeyboardInterrupt as e:
        print(type(e).__name__, flush=True)
        sys.exit(130)
""")


def test_a_staged_directory_terminated_is_removed_and_a_killed_ones_by_the_next_run(tmp_path):
    """`poolx export` writes through staged_directory: SIGTERM removes the staged directory; SIGKILL leaves it, and
    the next run on the same output removes it."""
    out = tmp_path / "new" / "export"

    def stage() -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", STAGE, str(out)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "staged\n", process.stderr.read()
        return process

    killed = stage()
    debris = temporaries(out.parent, out.name, killed.pid)
    killed.kill()
    killed.wait(timeout=30)
    assert len(debris) == 1 and (debris[0] / "model.onnx").exists()

    terminated = stage()
    assert not debris[0].exists()  # swept when the next run started
    assert len(temporaries(out.parent, out.name, terminated.pid)) == 1
    terminated.send_signal(signal.SIGTERM)
    stdout, stderr = terminated.communicate(timeout=30)
    assert terminated.returncode == 130 and stdout == "Terminated\n", stderr
    assert list(out.parent.iterdir()) == []


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_temporaries_of_dead_unlocked_owners_are_swept(tmp_path):
    """Two runs on one output never remove each other's temporaries: one whose process runs is kept (even with its
    lock free: the moment between creating and locking it), one whose lock is held is kept (even when its process
    id means nothing here: another container), names of other outputs and of older poolx versions are kept."""
    import fcntl

    out = tmp_path / "out.npy"
    dead = dead_pid()
    stale_file = tmp_path / f".out.npy.tmp-{dead}-abc123"
    stale_dir = tmp_path / f".out.npy.tmp-{dead}-def456"
    locked = tmp_path / f".out.npy.tmp-{dead}-locked"
    running = tmp_path / f".out.npy.tmp-{os.getpid()}-mine"
    other_output = tmp_path / f".other.npy.tmp-{dead}-abc123"
    old_version = tmp_path / ".out.npy.tmp-k2j4h5g6"
    for path in (stale_file, locked, running, other_output, old_version):
        path.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "part").write_bytes(b"x")
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert sorted(sweep_stale(out)) == sorted([stale_file, stale_dir])
    finally:
        os.close(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (locked, running, other_output, old_version))


def test_a_swap_killed_midway_gets_the_previous_output_back(tmp_path):
    """Killed between moving the previous export aside and moving the new one in: the next run puts the previous
    one back before it starts."""
    out = tmp_path / "export"
    aside = tmp_path / f".export.old-{dead_pid()}-xyz"
    (aside / "previous").mkdir(parents=True)
    (aside / "previous" / "manifest.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with staged_directory(out):
            assert (out / "manifest.json").read_text() == "{}"  # restored when this run began
            raise RuntimeError("this run fails")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
