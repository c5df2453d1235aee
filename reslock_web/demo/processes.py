"""The demo's flow processes: each `flow_script.py` subprocess and everything it started.

Found through /proc (parent ids), because a Prefect runner's children may outlive it: the demo
must stop them too, and must never signal a pid that has since been reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any


def children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie runs no code


class FlowProcess:
    """One `flow_script.py` subprocess, and every process it started (remembered, so that
    orphans left by a dying Prefect runner are still found)."""

    def __init__(self, label: str, process: subprocess.Popen, folder: Path) -> None:
        self.label = label
        self.process = process
        self.folder = folder
        self.started = time.monotonic()
        self._known: set[int] = {process.pid}

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_file(self) -> Path:
        return self.folder / "output.log"

    def running(self) -> bool:
        return self.process.poll() is None

    def refresh(self, children: dict[int, list[int]]) -> None:
        if self.running():
            self._known |= descendants(self.pid, children)
        # Forget the dead at once, so that a reused pid is never signalled.
        self._known = {pid for pid in self._known if alive(pid)}

    def members(self) -> set[int]:
        return {pid for pid in self._known if alive(pid)}

    def signal(self, signum: int) -> None:
        # Never killpg: these processes share the demo's own group.
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def events(self, name: str) -> list[dict[str, Any]]:
        try:
            data = (self.folder / "events.jsonl").read_bytes()
        except OSError:
            return []
        found = []
        for line in data.split(b"\n")[:-1]:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
        return found
