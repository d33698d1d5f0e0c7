"""Nothing read from storage is trusted before it is verified.

An attacker who can write to the storage (the bucket) replaces a function blob, a
status, a result, the inputs or a manifest; each time the object is refused with a
"tampered or foreign object" error for its task, and nothing of it is unpickled: the
attacker's pickles would create a marker file, which must never appear. Local backend
here (real worker processes, real storage); the Lambda emulator in
``test_lambda_integrity.py``."""
from __future__ import annotations

import json
import os
import pickle

import pytest

from cloudbutton_executor import Executor, IntegrityError, integrity, protocol, serialize, worker

PREFIX = "cloudbutton"


class Planted:
    """An attacker's pickle: unpickling it creates ``path`` (code ran)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def slow(x):
    import time

    time.sleep(x)
    return x


def tripled(x):
    return 3 * x


def big_result(x):
    return bytes(100_000) + bytes([x])


@pytest.fixture
def busy(storage):
    """An executor whose one worker is busy for a moment: the next job waits in the queue
    while the test tampers with what it will read."""
    with Executor(workers=1, storage=storage, timeout=60) as ex:
        blocker = ex.map(slow, [1.0])
        yield ex
        blocker.result(timeout=30)


def test_a_planted_function_blob_is_replaced_by_the_host(storage, tmp_path):
    marker = tmp_path / "ran"
    blob = serialize.dumps(tripled)
    fkey = protocol.function_key(PREFIX, serialize.digest(blob))
    storage.put(fkey, pickle.dumps(Planted(marker)))  # planted under the real blob's name
    with Executor(workers=1, storage=storage) as ex:
        assert ex.map(tripled, [1, 2]).result(timeout=60) == [3, 6]
    assert storage.get(fkey) == blob and not marker.exists()


def test_a_function_blob_overwritten_before_the_worker_loads_it_is_refused(busy, storage, tmp_path):
    marker = tmp_path / "ran"

    def fourfold(x):  # new code: no warm worker has it cached
        return 4 * x

    job = busy.map(fourfold, [1, 2])
    storage.put(job.function_key, pickle.dumps(Planted(marker)))
    outcomes = job.results(timeout=60)
    assert all(isinstance(o, IntegrityError) for o in outcomes), outcomes
    assert "tampered or foreign object" in str(outcomes[0]) and "function blob" in str(outcomes[0])
    assert not marker.exists()


def test_a_forged_status_is_refused_and_never_unpickled(busy, storage, tmp_path):
    marker = tmp_path / "ran"
    job = busy.map(tripled, [1, 2, 3])
    tid = job.task_ids()[1]
    forged = {"v": protocol.PROTOCOL_VERSION, "job_id": job.job_id, "task": tid, "state": "done",
              "attempt": 0, "items": {"base": 0, "t0_us": [0], "t1_us": [1]}, "stats": {},
              "result": {"inline": __import__("base64").b64encode(
                  pickle.dumps([(True, Planted(marker))])).decode()}}
    storage.put(protocol.status_key(PREFIX, job.job_id, tid), json.dumps(forged).encode())
    out = job.results(timeout=60)
    assert out[0] == 3 and out[2] == 9
    assert isinstance(out[1], IntegrityError) and "tampered or foreign object" in str(out[1])
    assert not marker.exists()


def test_a_genuine_status_copied_to_another_task_is_foreign(busy, storage):
    done = busy.map(tripled, [7])
    done.result(timeout=60)
    source = storage.get(protocol.status_key(PREFIX, done.job_id, done.task_ids()[0]))
    busy.map(slow, [1.0])  # the one worker is busy again while the status is planted
    job = busy.map(tripled, [1, 2])
    # Another job's sealed status, and one of this job's copied to its neighbour's key.
    storage.put(protocol.status_key(PREFIX, job.job_id, job.task_ids()[0]), source)
    out = job.results(timeout=60)
    assert isinstance(out[0], IntegrityError) and out[1] == 6


def test_inputs_overwritten_in_storage_are_refused_by_the_worker(busy, storage, tmp_path):
    marker = tmp_path / "ran"
    job = busy.map(len, [b"a" * 200_000, b"b" * 200_000])  # too big to travel inline
    dkey = protocol.data_key(PREFIX, job.job_id)
    size = len(storage.get(dkey))
    evil = pickle.dumps(((Planted(marker),), {}))
    storage.put(dkey, evil + b"\0" * (size - len(evil)))
    out = job.results(timeout=60)
    assert all(isinstance(o, IntegrityError) for o in out), out
    assert "data.pickle" in str(out[0]) and not marker.exists()


def test_a_tampered_result_is_refused_on_attach(storage, tmp_path):
    marker = tmp_path / "ran"
    with Executor(workers=1, storage=storage) as ex:
        job = ex.map(big_result, [1, 2])
        assert [r[-1] for r in job.result(timeout=60)] == [1, 2]
        rkey = protocol.result_key(PREFIX, job.job_id, job.task_ids()[0])
        storage.put(rkey, pickle.dumps([(True, Planted(marker))]))
        again = ex.attach(job.job_id)
        out = again.results(timeout=30)
    assert isinstance(out[0], IntegrityError) and "result" in str(out[0])
    assert out[1][-1] == 2 and not marker.exists()


def test_statuses_reach_the_host_verified_whatever_brings_them(storage, tmp_path):
    """The live path: a worker's result replaced between its write and the host's read."""
    from test_dispatch import FakeBackend, FakeClock, start_job

    marker = tmp_path / "ran"
    clock = FakeClock()
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2], fn=big_result)
    first, second = be.sent
    response = worker.handler(first)
    rkey = protocol.result_key("cb", job.job_id, first["task"])
    storage.put(rkey, pickle.dumps([(True, Planted(marker))]))
    be.listener.on_done(first, response)
    be.run(second)
    out = job.results(timeout=0)
    assert isinstance(out[0], IntegrityError) and out[1][-1] == 2 and not marker.exists()


def test_attach_refuses_a_tampered_or_foreign_manifest(storage, tmp_path, monkeypatch):
    with Executor(workers=1, storage=storage) as ex:
        job = ex.map(tripled, [1])
        job.result(timeout=60)
        mkey = protocol.manifest_key(PREFIX, job.job_id)
        genuine = storage.get(mkey)
        # Another host (another key) cannot verify it, and says what to do.
        monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(tmp_path / "other.key"))
        with pytest.raises(IntegrityError, match="started on another host"):
            ex.attach(job.job_id)
        monkeypatch.undo()
        doc = json.loads(genuine)
        doc["n_items"] = 2
        storage.put(mkey, json.dumps(doc).encode())
        with pytest.raises(IntegrityError, match="does not verify"):
            ex.attach(job.job_id)


def test_the_host_key_is_private_and_job_keys_differ(tmp_path, monkeypatch):
    path = tmp_path / "k" / "host.key"
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(path))
    a, b = integrity.job_key("20260101-000000-aaaaaa"), integrity.job_key("20260101-000000-bbbbbb")
    assert len(a) == 32 and a != b and os.stat(path).st_mode & 0o777 == 0o600
    assert integrity.job_key("20260101-000000-aaaaaa") == a  # derived, not stored: attach works
    sealed = integrity.seal(a, "jobs/x/tasks/t/status.json", {"task": "t"})
    assert json.loads(sealed)["task"] == "t"  # still plain JSON for readers without the key
    assert integrity.open_sealed(a, "jobs/x/tasks/t/status.json", sealed) == {"task": "t"}
    for key, name, raw in ((b, "jobs/x/tasks/t/status.json", sealed),
                           (a, "jobs/x/tasks/u/status.json", sealed),
                           (a, "jobs/x/tasks/t/status.json", sealed.replace(b'"t"', b'"u"'))):
        with pytest.raises(IntegrityError, match="tampered or foreign object"):
            integrity.open_sealed(key, name, raw)


def test_events_carry_the_key_and_storage_never_does(storage):
    with Executor(workers=1, storage=storage) as ex:
        job = ex.map(big_result, [1, 2], chunksize=1)
        job.result(timeout=60)
        key_hex = job.dispatcher.key.hex().encode()
        event = job.dispatcher.event(job.task_ids()[0], 0, 1)
        assert event["auth"].encode() == key_hex
    for key in storage.list(""):
        assert key_hex not in storage.get(key), key


def test_a_status_naming_another_task_is_foreign_even_when_sealed_right():
    job_id = protocol.new_job_id()
    key = integrity.job_key(job_id)
    skey = protocol.status_key("p", job_id, "000001-000002")
    raw = integrity.seal(key, protocol.object_name("p", skey),
                         {"v": 3, "job_id": job_id, "task": "000000-000001"})
    with pytest.raises(IntegrityError, match="foreign object"):
        worker.open_status(raw, "p", skey, key, job_id, "000001-000002")


def test_readers_without_the_key_see_a_sealed_documents_content_without_its_seal(storage):
    """The panel and ``cloudbutton jobs`` hold no key: they read a manifest's fields as the
    kernel verified them, and no seal among them."""
    from cloudbutton_executor import catalog

    with Executor(workers=1, storage=storage) as ex:
        job = ex.map(tripled, [1, 2])
        job.result(timeout=60)
    mkey = protocol.manifest_key(PREFIX, job.job_id)
    verified = integrity.open_sealed(integrity.job_key(job.job_id), protocol.object_name(PREFIX, mkey),
                                     storage.get(mkey))
    shown = catalog.manifest(storage, PREFIX, job.job_id)
    assert shown == verified and "mac" not in shown and shown["job_id"] == job.job_id
    # One written without a seal (by anyone who can write to the bucket) is shown as it is,
    # unverified like every document these readers show.
    storage.put(mkey, json.dumps(verified).encode())
    assert catalog.manifest(storage, PREFIX, job.job_id) == verified


def test_content_that_does_not_match_its_address_is_refused_naming_the_digest():
    data = b"the blob a worker was told to run"
    digest = integrity.sha256(data)
    integrity.check_content(data, digest, "function blob f")
    with pytest.raises(IntegrityError) as info:
        integrity.check_content(data + b"!", digest, "function blob f")
    assert str(info.value) == ("function blob f is a tampered or foreign object: its content does "
                               f"not match its sha256 {digest[:16]}…")


def test_the_host_key_lives_in_the_users_cloudbutton_directory_by_default(tmp_path, monkeypatch,
                                                                          caplog):
    monkeypatch.delenv("CLOUDBUTTON_KEY_FILE", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    key = integrity.job_key("20260101-000000-aaaaaa")
    path = home / ".cloudbutton" / "host.key"
    assert os.listdir(home) == [".cloudbutton"] and os.listdir(path.parent) == ["host.key"]
    assert os.stat(path).st_mode & 0o777 == 0o600 and len(bytes.fromhex(path.read_text())) == 32
    assert os.stat(path.parent).st_mode & 0o777 == 0o700  # the directory is private too
    # Made private, never readable by others for a moment (that would be mended, and said).
    assert not [r for r in caplog.records if r.name == "cloudbutton.integrity"]
    assert integrity.job_key("20260101-000000-aaaaaa") == key


def test_a_running_kernel_keeps_the_host_key_it_read(tmp_path, monkeypatch):
    """Jobs in flight stay verifiable: the key is read once per key file, so replacing the
    file changes nothing for this process (a new process would read the new key)."""
    path = tmp_path / "k" / "host.key"
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(path))
    key = integrity.job_key("20260101-000000-aaaaaa")
    path.write_text(os.urandom(32).hex() + "\n")
    assert integrity.job_key("20260101-000000-aaaaaa") == key
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(tmp_path / "other.key"))  # another file: read
    assert integrity.job_key("20260101-000000-aaaaaa") != key


def test_a_host_key_readable_by_others_is_made_private_and_said(tmp_path, monkeypatch, caplog):
    path = tmp_path / "host.key"
    path.write_text(os.urandom(32).hex() + "\n")
    os.chmod(path, 0o644)
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(path))
    key = integrity.job_key("20260101-000000-aaaaaa")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [r.getMessage() for r in caplog.records if r.name == "cloudbutton.integrity"] == [
        f"{path} was readable by other users; its mode is now 0600"]
    assert key == integrity.job_key("20260101-000000-aaaaaa")  # the same key, kept


def test_a_seal_is_hmac_sha256_over_the_objects_name_a_nul_and_the_rest_of_the_document():
    """The sealed format, as a reader in another language (or release) would check it."""
    import hashlib
    import hmac

    key, name = bytes(range(32)), "cloudbutton/jobs/j/manifest.json"
    sealed = integrity.seal(key, name, {"job_id": "j", "n_items": 3})
    mac, rest = sealed[len(b'{"mac":"'):len(b'{"mac":"') + 64], b"{" + sealed[len(b'{"mac":"') + 66:]
    assert rest == b'{"job_id":"j","n_items":3}'
    assert mac.decode() == hmac.new(key, name.encode() + b"\x00" + rest, hashlib.sha256).hexdigest()
    # Only a non-empty object can carry the seal as its first member.
    for doc in ({}, [1, 2], "text"):
        with pytest.raises(ValueError, match="^only a non-empty JSON object can be sealed$"):
            integrity.seal(key, name, doc)


def test_a_job_key_is_hkdf_sha256_of_the_host_key_with_the_job_id_as_info(tmp_path, monkeypatch):
    """RFC 5869 with one block of output, computed here independently: a host that attaches
    after a restart (or an upgrade) derives the same key from the same host key."""
    import hashlib
    import hmac

    path = tmp_path / "host.key"
    host = bytes(range(32))
    path.write_text(host.hex() + "\n")
    os.chmod(path, 0o600)
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(path))
    job_id = "20260101-000000-aaaaaa"
    prk = hmac.new(b"cloudbutton job key v1", host, hashlib.sha256).digest()
    assert integrity.job_key(job_id) == hmac.new(prk, job_id.encode() + b"\x01", hashlib.sha256).digest()


def test_a_key_file_of_16_bytes_is_the_shortest_accepted(tmp_path, monkeypatch):
    """A host key needs at least 16 bytes (32 hex digits); a shorter one is refused below."""
    import hashlib
    import hmac

    path = tmp_path / "host.key"
    path.write_text("ab" * 16 + "\n")
    os.chmod(path, 0o600)
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(path))
    prk = hmac.new(b"cloudbutton job key v1", b"\xab" * 16, hashlib.sha256).digest()
    assert integrity.job_key("j") == hmac.new(prk, b"j\x01", hashlib.sha256).digest()


@pytest.mark.parametrize("text", ["", "not hex at all", "00" * 15])
def test_a_key_file_without_a_key_is_refused_saying_what_to_do(tmp_path, monkeypatch, text):
    path = tmp_path / "host.key"
    path.write_text(text)
    os.chmod(path, 0o600)
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(path))
    with pytest.raises(IntegrityError) as info:
        integrity.job_key("20260101-000000-aaaaaa")
    assert str(info.value) == (f"{path} does not hold a host key (64 hex digits); move it away to make "
                               "a new one (jobs sealed with the old one cannot be attached)")


def test_a_document_whose_seal_is_damaged_anywhere_is_refused_naming_it():
    key, name = bytes(32), "p/jobs/j/manifest.json"
    sealed = integrity.seal(key, name, {"a": 1})
    assert integrity.open_sealed(key, name, sealed) == {"a": 1}
    for raw in (b"not json", b'{"MAC"' + sealed[6:], sealed.replace(b'",', b'" ,', 1), sealed[:-2] + b"2}"):
        with pytest.raises(IntegrityError) as info:
            integrity.open_sealed(key, name, raw)
        assert str(info.value) == (f"object {name} is a tampered or foreign object: its seal does not "
                                   "verify with this job's key"), raw
