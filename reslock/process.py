"""Whether a lock holder's process has provably ended (Linux, same machine only).

A SIGKILLed holder's run goes on showing Running, and across machines nothing tells a dead
process from a live one: the board must then fence (keep the resource closed until the
holder's lease could no longer be in use). On the machine the holder ran on, /proc can prove
it: the helper records who it is when it takes a lock (`process_identity()`), and
`process_gone()` answers True only when that process can no longer run any code.

Anything unknown (no /proc, another boot or PID namespace, malformed data, a process hidden
from us) answers False: "not provably dead" is always the safe answer. Plain module: the
flow-side helper imports it, so no Django here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["describe", "process_alive", "process_gone", "process_identity", "valid_identity"]

PROC = Path("/proc")
BOOT_ID = PROC / "sys" / "kernel" / "random" / "boot_id"
# Field 22 of /proc/<pid>/stat; counted from field 3 (the state), the first after the comm.
START_TICKS_INDEX = 22 - 3
DEAD_STATES = frozenset("ZX")  # zombie (killed, not yet reaped) or dead
PID_MAX = 4_194_304  # Linux's PID_MAX_LIMIT
IDENTITY_TEXT_KEYS = ("boot_id", "pid_ns", "time_ns")


@dataclass(frozen=True)
class _Stat:
    state: str
    start_ticks: int


# --- who we are --------------------------------------------------------------------------
def process_identity(pid: int | None = None) -> dict[str, Any] | None:
    """This process's identity (or that of `pid`, a process we can see), None without /proc.

    `start_ticks` tells the process from a later one that reuses its pid; `boot_id` and
    `pid_ns` say where a pid means something. The kernel shifts `start_ticks` by the reader's
    time namespace, so that namespace is part of where the figures can be compared.
    """
    entry = "self" if pid is None else str(pid)
    pid = os.getpid() if pid is None else pid
    try:
        if entry == "self" and os.readlink(PROC / "self") != str(pid):
            return None  # this /proc belongs to another PID namespace than ours
        boot_id = BOOT_ID.read_text().strip()
        pid_ns = os.readlink(PROC / entry / "ns" / "pid")
        time_ns = _time_namespace(entry)
        stat = _read_stat(PROC / entry / "stat")
    except OSError:
        return None
    if stat is None or not boot_id:
        return None
    return {
        "boot_id": boot_id,
        "pid_ns": pid_ns,
        "time_ns": time_ns,
        "pid": pid,
        "start_ticks": stat.start_ticks,
    }


def _time_namespace(entry: str) -> str:
    """The time namespace link, or "" on kernels without time namespaces (before 5.6)."""
    try:
        return os.readlink(PROC / entry / "ns" / "time")
    except FileNotFoundError:
        return ""


def _read_stat(path: Path) -> _Stat | None:
    """State and start time from /proc/<pid>/stat; None when the text is not what Linux writes.

    The comm field (2) is free text in parentheses that may itself hold spaces and
    parentheses, so the fields are counted from after the last ')'.
    """
    text = path.read_text()
    close = text.rfind(")")
    fields = text[close + 1 :].split() if close >= 0 else []
    if len(fields) <= START_TICKS_INDEX:
        return None
    try:
        start_ticks = int(fields[START_TICKS_INDEX])
    except ValueError:
        return None
    return _Stat(state=fields[0], start_ticks=start_ticks)


# --- checking data that came through Prefect ---------------------------------------------
def valid_identity(value: object) -> dict[str, Any] | None:
    """`value` if it is an identity as `process_identity()` writes it, else None.

    It arrives in an event payload, so it is checked field by field before anything trusts it.
    """
    if not isinstance(value, dict) or set(value) != {*IDENTITY_TEXT_KEYS, "pid", "start_ticks"}:
        return None
    texts_ok = all(
        isinstance(value[key], str) and len(value[key]) <= 100 for key in IDENTITY_TEXT_KEYS
    )
    pid, start_ticks = value["pid"], value["start_ticks"]
    numbers_ok = (
        _is_int(pid) and 0 < pid <= PID_MAX and _is_int(start_ticks) and 0 <= start_ticks < 2**63
    )
    if not (texts_ok and numbers_ok and value["boot_id"] and value["pid_ns"]):
        return None
    return dict(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def describe(identity: dict[str, Any]) -> str:
    """How a plan names the process (only ever said of one proved to have run here)."""
    return f"pid {identity.get('pid')} on this machine"


# --- has it ended? -----------------------------------------------------------------------
def _from_here(identity: object) -> dict[str, Any] | None:
    """The identity, if well formed and recorded where our /proc can judge it (this boot,
    our PID and time namespaces); else None, and nothing can be proven about it."""
    recorded = valid_identity(identity)
    here = process_identity()
    if recorded is None or here is None:
        return None
    if any(here[key] != recorded[key] for key in IDENTITY_TEXT_KEYS):
        return None
    return recorded


def process_gone(identity: object) -> bool:
    """True only when the process `identity` names provably runs no code any more.

    It must have run on this machine (same boot) and in our PID and time namespaces, and
    now: no process has its pid, or the one that has it started at another time (the pid
    was reused), or it is a zombie whose every thread has exited.
    """
    recorded = _from_here(identity)
    return recorded is not None and _ended(recorded["pid"], recorded["start_ticks"])


def process_alive(identity: object) -> bool:
    """True only when the process `identity` names provably still runs here: its pid is held
    by a process that started at the recorded time, on this machine, and is not a zombie."""
    recorded = _from_here(identity)
    if recorded is None:
        return False
    try:
        stat = _read_stat(PROC / str(recorded["pid"]) / "stat")
    except OSError:
        return False
    return (
        stat is not None
        and stat.start_ticks == recorded["start_ticks"]
        and stat.state not in DEAD_STATES
    )


def _ended(pid: int, start_ticks: int) -> bool:
    try:
        stat = _read_stat(PROC / str(pid) / "stat")
    except (FileNotFoundError, ProcessLookupError):
        return _no_such_pid(pid)
    except OSError:
        return False
    if stat is None:
        return False
    if stat.start_ticks != start_ticks:
        return True  # a pid is only reused once the process that had it has been reaped
    return stat.state in DEAD_STATES and _every_thread_exited(pid)


def _no_such_pid(pid: int) -> bool:
    """Confirm a missing /proc entry with the kernel: a /proc mounted with hidepid hides
    other users' live processes, but signal 0 still finds them (EPERM, not ESRCH)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _every_thread_exited(pid: int) -> bool:
    """A main thread that exited shows 'Z' while other threads of the process may still run."""
    try:
        threads = os.listdir(PROC / str(pid) / "task")
    except (FileNotFoundError, ProcessLookupError):
        return _no_such_pid(pid)
    except OSError:
        return False
    for tid in threads:
        try:
            stat = _read_stat(PROC / str(pid) / "task" / tid / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # that thread has been released since the listing: it has exited
        except OSError:
            return False
        if stat is None or stat.state not in DEAD_STATES:
            return False
    return True
