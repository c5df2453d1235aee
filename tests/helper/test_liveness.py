"""Proving a lock holder's process dead from /proc: only ever on this machine, never by guess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reslock import process as liveness
from reslock.process import process_alive, process_gone, process_identity, valid_identity
from tests.support.net import wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@pytest.fixture
def child():
    """A live child process; killed and reaped at the end whatever the test did."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def state_of(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 1 :].split()[0]


# --- reading an identity -------------------------------------------------------------------
def test_it_reads_its_own_identity_from_proc() -> None:
    identity = process_identity()
    assert identity is not None and valid_identity(identity) == identity
    assert identity["pid"] == os.getpid()
    assert identity["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert identity["pid_ns"] == os.readlink("/proc/self/ns/pid")
    assert not process_gone(identity)  # we are running this very line


def test_it_counts_stat_fields_after_the_last_parenthesis(tmp_path: Path) -> None:
    # A comm may hold spaces and parentheses: "a) R 1 (b" must not shift the fields.
    fields = ["S"] + [str(n) for n in range(4, 22)] + ["987654"] + ["0"] * 30
    stat = tmp_path / "stat"
    stat.write_text(f"4242 (a) R 1 (b) {' '.join(fields)}\n")
    parsed = liveness._read_stat(stat)
    assert parsed == liveness._Stat(state="S", start_ticks=987654)
    stat.write_text("4242 (cut short) S 1 2")
    assert liveness._read_stat(stat) is None


BASE = {"boot_id": "b", "pid_ns": "pid:[1]", "time_ns": "", "pid": 123, "start_ticks": 5}
MALFORMED = [
    None,
    "not a dict",
    {key: value for key, value in BASE.items() if key != "start_ticks"},
    {**BASE, "extra": "key"},
    {**BASE, "pid": "123"},
    {**BASE, "pid": True},
    {**BASE, "pid": 0},
    {**BASE, "pid": -1},
    {**BASE, "pid": 2**40},
    {**BASE, "start_ticks": 1.5},
    {**BASE, "start_ticks": -1},
    {**BASE, "boot_id": ""},
    {**BASE, "boot_id": 42},
    {**BASE, "pid_ns": None},
    {**BASE, "time_ns": 7},
]


@pytest.mark.parametrize("identity", MALFORMED)
def test_a_malformed_identity_is_never_proof_of_death(identity: object) -> None:
    assert valid_identity(BASE) == BASE
    assert valid_identity(identity) is None
    assert process_gone(identity) is False


# --- a real child process ------------------------------------------------------------------
def test_a_live_child_is_not_gone_and_a_killed_and_reaped_one_is(child) -> None:
    identity = process_identity(child.pid)
    assert identity is not None and identity["pid"] == child.pid
    assert not process_gone(identity)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)  # reaped: no /proc entry left
    assert process_gone(identity)


def test_a_killed_child_not_yet_reaped_is_a_zombie_and_gone(child) -> None:
    identity = process_identity(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    wait_for(lambda: state_of(child.pid) == "Z", 10, what="the child to become a zombie")
    assert process_gone(identity)
    assert not process_alive(identity)


def test_a_child_is_alive_until_it_is_killed_and_never_by_another_start_time(child) -> None:
    identity = process_identity(child.pid)
    assert process_alive(identity)
    assert not process_alive({**identity, "start_ticks": identity["start_ticks"] + 1})
    assert not process_alive({**identity, "boot_id": "another boot"})
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert not process_alive(identity)


@pytest.mark.parametrize("identity", MALFORMED)
def test_a_malformed_identity_is_never_proof_of_life(identity: object) -> None:
    assert process_alive(identity) is False


def test_another_start_time_means_the_pid_was_reused(child) -> None:
    identity = process_identity(child.pid)
    assert process_gone({**identity, "start_ticks": identity["start_ticks"] + 1})


@pytest.mark.parametrize("key", ["boot_id", "pid_ns", "time_ns"])
def test_a_process_from_another_boot_or_namespace_is_never_gone(child, key: str) -> None:
    identity = process_identity(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert process_gone(identity)
    assert not process_gone({**identity, key: identity[key] + "-elsewhere"})


# --- what /proc can hide -------------------------------------------------------------------
@pytest.fixture
def fake_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A /proc the test writes; "here" is this process's real identity."""
    here = process_identity()
    monkeypatch.setattr(liveness, "PROC", tmp_path)
    monkeypatch.setattr(liveness, "process_identity", lambda: here)
    return tmp_path


def write_stat(path: Path, pid: int, state: str, start_ticks: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    fields = [state] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 20
    (path / "stat").write_text(f"{pid} (python (x)) {' '.join(fields)}\n")


def identity_for(pid: int, start_ticks: int = 100) -> dict:
    return {**liveness.process_identity(), "pid": pid, "start_ticks": start_ticks}


def test_a_live_process_hidden_from_proc_is_not_gone(fake_proc: Path) -> None:
    # hidepid=2 hides other users' processes from /proc; the kernel still knows this one.
    assert process_gone(identity_for(os.getpid())) is False


def test_a_zombie_main_thread_with_other_threads_running_is_not_gone(fake_proc: Path) -> None:
    pid = os.getpid()  # any pid: only the fake /proc is read
    write_stat(fake_proc / str(pid), pid, "Z", 100)
    write_stat(fake_proc / str(pid) / "task" / str(pid), pid, "Z", 100)
    write_stat(fake_proc / str(pid) / "task" / str(pid + 1), pid + 1, "S", 100)
    assert process_gone(identity_for(pid)) is False
    write_stat(fake_proc / str(pid) / "task" / str(pid + 1), pid + 1, "Z", 100)
    assert process_gone(identity_for(pid)) is True


def test_an_unreadable_or_garbled_stat_is_not_proof(fake_proc: Path) -> None:
    pid = os.getpid()
    (fake_proc / str(pid)).mkdir()
    (fake_proc / str(pid) / "stat").write_text("garbage")
    assert process_gone(identity_for(pid)) is False
    (fake_proc / str(pid) / "stat").unlink()
    (fake_proc / str(pid) / "stat").mkdir()  # reading it fails with an OSError
    assert process_gone(identity_for(pid)) is False
