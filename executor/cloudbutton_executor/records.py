"""The dispatch record: what a job's host has sent and when, and who that host is.

The dispatching host keeps ``jobs/<id>/dispatch.json`` (sealed, see ``integrity``)
up to date: the first item not yet planned, and the tasks in flight with when
they were sent and how many attempts, retries and redeliveries they used. It is
rewritten at most every ``RECORD_INTERVAL_S`` when something changed and at least
every ``protocol.HEARTBEAT_S`` while the job runs, so its age says whether that host
is alive. A host that attaches to the job (after a kernel restart) reads it to
send what was never sent and what is overdue, with the budgets already spent.

Tasks in flight are stored as runs (consecutive tasks of one size, sent within
a second of each other, with equal counters), so 10,000 queued tasks cost one line.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any, NamedTuple

from . import protocol

RECORD_INTERVAL_S = 2.0


class Sent(NamedTuple):
    """One task in flight, as the record keeps it."""

    tid: str
    sent_at: float          # when its current attempt was sent (its deadline counts from then)
    attempt: int
    retries_used: int
    redelivered: int


def owner(session: str) -> dict[str, Any]:
    """Who dispatches: this process (a host may tell at once whether it is still alive)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "session": session}


def document(job_id: str, epoch: int, who: dict[str, Any], next_item: int, sent: Iterable[Sent],
             now: float, n_items: int) -> dict[str, Any]:
    runs: list[list[Any]] = []
    for s in sorted(sent, key=lambda s: protocol.task_range(s.tid)):
        a, b = protocol.task_range(s.tid)
        if runs:
            last = runs[-1]
            if (last[1] == a and last[2] == b - a and abs(last[3] - s.sent_at) <= 1.0
                    and last[4:] == [s.attempt, s.retries_used, s.redelivered]):
                last[1] = b
                last[3] = min(last[3], s.sent_at)  # the earliest: deadlines never move later
                continue
        runs.append([a, b, b - a, round(s.sent_at, 3), s.attempt, s.retries_used, s.redelivered])
    return {"v": protocol.PROTOCOL_VERSION, "job_id": job_id, "epoch": epoch, "owner": who,
            "updated": now, "next_item": next_item, "n_items": n_items, "open": runs}


def in_flight(record: dict[str, Any]) -> list[Sent]:
    """The tasks a record says were in flight."""
    n = int(record["n_items"])
    out = []
    for a, b, size, sent_at, attempt, retries_used, redelivered in record.get("open") or ():
        for start in range(a, b, size):
            tid = protocol.task_id(start, min(b, start + size), n)
            out.append(Sent(tid, float(sent_at), int(attempt), int(retries_used), int(redelivered)))
    return out


def owner_alive(record: dict[str, Any], now: float) -> bool:
    """Whether the record's host may still be dispatching: its heartbeat is recent and,
    on this machine, its process exists."""
    if now - float(record.get("updated") or 0) > protocol.DISPATCH_STALE_S:
        return False
    who = record.get("owner") or {}
    if who.get("host") == socket.gethostname() and isinstance(who.get("pid"), int):
        try:
            os.kill(who["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True
