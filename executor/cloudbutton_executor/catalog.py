"""Jobs as their storage tells them: manifests, statuses, dispatch records and cancel
markers, read as JSON only (never unpickled), for the Jupyter panel, the CLI and ``%cloud
jobs``. These readers hold no job key, so what they show is unverified (a tampered status
can skew a count or a cost shown, never run code): the kernel verifies everything it uses."""
from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from . import accounting, integrity, protocol, shown_inputs
from .storage import NotFound, Storage


def job_ids(storage: Storage, prefix: str, limit: int | None = None) -> list[str]:
    """The ids of the jobs under ``prefix``, newest first."""
    return protocol.job_ids(storage.children(protocol.jobs_prefix(prefix)))[:limit]


def manifest(storage: Storage, prefix: str, job_id: str) -> dict[str, Any] | None:
    """A job's manifest (unverified: no key here); None if it is missing or being written."""
    try:
        data = integrity.unsealed(storage.get(protocol.manifest_key(prefix, job_id)))
    except (NotFound, ValueError, AttributeError):
        return None
    return data if isinstance(data, dict) else None


def manifests(storage: Storage, prefix: str, limit: int = 20) -> list[dict[str, Any]]:
    """The manifests of the newest ``limit`` jobs, newest first."""
    out = []
    for job_id in job_ids(storage, prefix, limit):
        m = manifest(storage, prefix, job_id)
        if m is not None:
            out.append(m)
    return out


def inputs_shown(storage: Storage, prefix: str, job_id: str) -> list[str]:
    """Short reprs of the job's first inputs (``shown_inputs``; unverified: no key here, and
    only ever shown as text); empty for a job that stored none."""
    try:
        doc = integrity.unsealed(storage.get(protocol.inputs_shown_key(prefix, job_id)))
    except (NotFound, ValueError, AttributeError):
        return []
    return shown_inputs.read(doc, job_id)


def stored_task_ids(storage: Storage, prefix: str, job_id: str) -> list[str]:
    """The tasks of a job whose status is stored (one LIST)."""
    keys = storage.list(protocol.tasks_prefix(prefix, job_id))
    return [t for t in map(protocol.task_id_from_status_key, keys) if t is not None]


def statuses(storage: Storage, prefix: str, job_id: str,
             cache: MutableMapping[tuple[str, str], dict[str, Any]] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Task id -> stored status. Statuses are final (first write wins): ``cache`` keeps
    those read, so each is read once."""
    out = {}
    for tid in stored_task_ids(storage, prefix, job_id):
        st = cache.get((job_id, tid)) if cache is not None else None
        if st is None:
            try:
                st = json.loads(storage.get(protocol.status_key(prefix, job_id, tid)))
            except (NotFound, ValueError):
                continue  # being written
            if cache is not None:
                cache[(job_id, tid)] = st
        out[tid] = st
    return out


def dispatch_record(storage: Storage, prefix: str, job_id: str) -> dict[str, Any] | None:
    """The job's dispatch record as JSON, unverified (no key here); None if it has none."""
    try:
        return integrity.unsealed(storage.get(protocol.dispatch_key(prefix, job_id)))
    except (NotFound, ValueError):
        return None


def cancel_info(storage: Storage, prefix: str, job_id: str) -> dict[str, Any] | None:
    """The job's cancel marker (who, when); None if it was not cancelled."""
    try:
        return protocol.read_cancel_marker(storage.get(protocol.cancel_key(prefix, job_id)))
    except NotFound:
        return None


def summary(storage: Storage, prefix: str, job_manifest: dict[str, Any], now: float,
            cache: MutableMapping[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """``accounting.stored_job_summary`` of a job, read from storage."""
    job_id = job_manifest["job_id"]
    found = statuses(storage, prefix, job_id, cache)
    record = None if accounting.ended_items(found) >= int(job_manifest.get("n_items", 0)) \
        else dispatch_record(storage, prefix, job_id)
    return accounting.stored_job_summary(job_manifest, found, cancel_info(storage, prefix, job_id),
                                         now, record)


def brief(storage: Storage, prefix: str, job_manifest: dict[str, Any], now: float) -> dict[str, Any]:
    """What a listing of many jobs shows, from the keys only (one LIST and one HEAD per
    job, no status read): items, stored tasks, items ended, and the state."""
    job_id = job_manifest["job_id"]
    tids = stored_task_ids(storage, prefix, job_id)
    ended = accounting.ended_items(tids)
    unfinished = ended < int(job_manifest.get("n_items", 0))
    cancelled = unfinished and storage.exists(protocol.cancel_key(prefix, job_id))
    record = dispatch_record(storage, prefix, job_id) if unfinished and not cancelled else None
    return {"job_id": job_id, "created": job_manifest.get("created"),
            "function": job_manifest.get("function"), "label": job_manifest.get("label"),
            "backend": job_manifest.get("backend"), "items": job_manifest.get("n_items"),
            "tasks_stored": len(tids), "ended": ended, "rerun_of": job_manifest.get("rerun_of"),
            "state": accounting.stored_state(job_manifest, ended, None, cancelled, now, record)}
