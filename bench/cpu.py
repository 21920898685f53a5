"""CPU time of processes, read from /proc, for benchmarks that say what each process (and
PostgreSQL) spent: user + system time of `/proc/<pid>/stat`, in seconds.

A benchmark takes snapshots (pid -> cumulative seconds) and `spent()` turns two of them into
what each process used in between. Processes come and go (PostgreSQL starts a backend per
connection), so: a process in both snapshots spent the difference; one that appeared spent
all it has (it started in between); one that went is lost for its last moments.
"""

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")

Snapshot = Mapping[int, float]


def parse_stat(text: str) -> float:
    """Seconds of CPU (utime + stime) in the text of `/proc/<pid>/stat`."""
    # Field 2 is the command in parentheses, which may hold spaces: count from after it.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def parse_reaped(text: str) -> tuple[int, float]:
    """(parent pid, seconds of CPU of the children it has waited for) from the text of
    `/proc/<pid>/stat`: what exited children used over their whole lives."""
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[13]) + int(fields[14])) / TICKS


def parse_machine(text: str) -> tuple[float, float]:
    """(busy, total) seconds of all cores from the text of `/proc/stat`; idle, iowait and
    steal (time the hypervisor gave to other machines) are not busy."""
    values = [int(value) for value in text.splitlines()[0].split()[1:]]
    total = sum(values[:8])  # guest time is counted inside user time already
    idle = values[3] + values[4] + values[7]
    return (total - idle) / TICKS, total / TICKS


def process_seconds(pid: int) -> float | None:
    """CPU seconds of a process so far; None once it is gone."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def read_stat(pid: int) -> str | None:
    try:
        return (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None


def machine_seconds() -> tuple[float, float]:
    return parse_machine((PROC / "stat").read_text())


def descendants(pid: int) -> list[int]:
    """The process and every process under it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list((PROC / str(current) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def snapshot(pids: Iterable[int]) -> dict[int, float]:
    taken = {}
    for pid in set(pids):
        seconds = process_seconds(pid)
        if seconds is not None:
            taken[pid] = seconds
    return taken


def spent(before: Snapshot, after: Snapshot) -> dict[int, float]:
    """CPU seconds each process of `after` used since `before`."""
    used = {}
    for pid, seconds in after.items():
        previous = before.get(pid)
        # A pid reused by a new process shows less than before: it is a new process.
        used[pid] = seconds if previous is None or seconds < previous else seconds - previous
    return used


def by_label(used: Mapping[int, float], labels: Mapping[int, str]) -> dict[str, float]:
    """Seconds summed per label (processes without one are left out)."""
    totals: dict[str, float] = {}
    for pid, seconds in used.items():
        label = labels.get(pid)
        if label is not None:
            totals[label] = totals.get(label, 0.0) + seconds
    return totals


def hottest(used: Mapping[int, float], labels: Mapping[int, str]) -> dict[str, float]:
    """The most any one process of each label used: a single-threaded process (a Python
    service, a PostgreSQL backend) saturates at one core whatever the machine has."""
    most: dict[str, float] = {}
    for pid, seconds in used.items():
        label = labels.get(pid)
        if label is not None:
            most[label] = max(most.get(label, 0.0), seconds)
    return most


def tcp_ports_towards(pid: int, remote_port: int) -> set[int]:
    """Local ports of the process's TCP connections to `remote_port` (its PostgreSQL
    connections, say): inodes from /proc/<pid>/fd, matched in /proc/<pid>/net/tcp[6]."""
    inodes = set()
    try:
        for link in (PROC / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
