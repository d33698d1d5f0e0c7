"""Data-driven map: storage locations listed once on the host, split into chunks that every
task reads by byte range, on local files and on S3 (a real moto server over HTTP)."""
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import yaml

from cloudbutton_executor import Executor, NoSuchBucket, NotFound, datamap, partitions
from cloudbutton_executor.datamap import S3Service, split
from cloudbutton_executor.partitions import DataPartition
from cloudbutton_executor.storage import LocalStorage, S3Storage

REGION = "us-east-1"


def text_with_awkward_lines(seed: int, n_lines: int = 60) -> bytes:
    """Lines of every awkward shape: empty, one byte, longer than any chunk, a newline
    first, and a last line without its newline."""
    rnd = random.Random(seed)
    lines = [b""]
    for i in range(n_lines):
        shape = rnd.random()
        if shape < 0.15:
            lines.append(b"")
        elif shape < 0.3:
            lines.append(b"x")
        elif shape < 0.4:
            lines.append(b"L" * rnd.randint(80, 300))  # longer than the chunks below
        else:
            lines.append(" ".join(f"w{i}_{k}" for k in range(rnd.randint(1, 8))).encode())
    return b"\n".join(lines)  # the first line is empty, the last has no newline


def lines_of(data: bytes) -> list[bytes]:
    """Each line with its newline, as a reader of the whole object sees them."""
    import io

    return list(io.BytesIO(data))


# Where objects live: a local directory, or a bucket on moto ----------------------------------
class LocalPlace:
    kind = "local"

    def __init__(self, root):
        self.root = str(root)

    def put(self, name, data):
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def location(self, name=""):
        return os.path.join(self.root, name)

    def partitions(self, name, size, chunk_size):
        path = self.location(name)
        return list(split({"kind": "file"}, None, path, path, size, chunk_size, None, "\n"))


class S3Place:
    kind = "s3"

    def __init__(self, endpoint, bucket):
        self.endpoint, self.bucket = endpoint, bucket
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)

    def put(self, name, data):
        self.client.put_object(Bucket=self.bucket, Key=name, Body=data)

    def location(self, name=""):
        return f"s3://{self.bucket}/{name}"

    def partitions(self, name, size, chunk_size):
        source = {"kind": "s3", "region": REGION, "endpoint_url": self.endpoint}
        return list(split(source, self.bucket, name, None, size, chunk_size, None, "\n"))


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    if request.param == "local":
        return LocalPlace(tmp_path / "data")
    return S3Place(request.getfixturevalue("moto_endpoint"), request.getfixturevalue("s3_bucket"))


@pytest.fixture
def data_ex(place, tmp_path):
    """An executor whose workers reach ``place`` (local files, or moto through the S3
    endpoint of the job storage)."""
    storage = (LocalStorage(str(tmp_path / "jobs")) if place.kind == "local" else
               S3Storage(place.bucket, region=REGION, endpoint_url=place.endpoint))
    with Executor(workers=2, storage=storage, timeout=60) as ex:
        yield ex


def read_chunks(parts):
    return [p.data_stream.read() for p in parts]


# Chunk boundaries ---------------------------------------------------------------------------
def test_every_line_is_read_by_exactly_one_chunk(place):
    """For every chunk size from 1 byte to past the object, the chunks' bytes, in order,
    are the object: no line lost, none read twice, none split between two chunks."""
    data = text_with_awkward_lines(seed=1)
    place.put("t/awkward.txt", data)
    # Every small size on local files; on S3 (a few GETs per chunk over HTTP) a spread of them.
    small = range(1, 40) if place.kind == "local" else (1, 2, 3, 5, 8, 13, 21, 34)
    sizes = list(small) + [97, 255, 256, 257, len(data) - 1, len(data), len(data) + 10]
    for chunk_size in sizes:
        parts = place.partitions("t/awkward.txt", len(data), chunk_size)
        chunks = read_chunks(parts)
        assert b"".join(chunks) == data, chunk_size
        for c in chunks:  # each chunk is whole lines (the last may lack its newline)
            assert c == b"" or c.endswith(b"\n") or data.endswith(c)
        got = [line for c in chunks for line in lines_of(c)]
        assert got == lines_of(data), chunk_size


def test_first_and_last_chunks(place):
    data = b"first line\nsecond\nthird line here\nlast"
    place.put("fl.txt", data)
    parts = place.partitions("fl.txt", len(data), 10)
    assert [p.part for p in parts] == [1, 2, 3, 4] and {p.total_parts for p in parts} == {4}
    assert parts[0].data_byte_range == (0, 9) and parts[-1].data_byte_range == (30, len(data) - 1)
    chunks = read_chunks(parts)
    assert chunks[0] == b"first line\n"            # ends on a newline exactly: no extension
    assert chunks[1] == b"second\nthird line here\n"  # "second" starts in it, "third" straddles
    assert chunks[2] == b""                        # starts and ends inside "third line here"
    assert chunks[3] == b"last"                    # the last line has no newline


def test_exact_byte_ranges_without_newline(place):
    data = bytes(range(256)) * 3
    place.put("bin.dat", data)
    source = ({"kind": "file"} if place.kind == "local" else
              {"kind": "s3", "region": REGION, "endpoint_url": place.endpoint})
    bucket = None if place.kind == "local" else place.bucket
    key = place.location("bin.dat") if place.kind == "local" else "bin.dat"
    path = key if place.kind == "local" else None
    parts = list(split(source, bucket, key, path, len(data), None, 7, None))
    chunks = read_chunks(parts)
    assert len(chunks) == 7 and b"".join(chunks) == data
    assert [len(c) for c in chunks] == [p.chunk_size for p in parts]


def test_line_longer_than_the_lookahead(place, monkeypatch):
    """The line straddling a chunk's end is read to its end, however long (more GETs)."""
    from cloudbutton_executor import partitions

    monkeypatch.setattr(partitions, "LOOKAHEAD", 16)
    data = b"a\n" + b"B" * 5000 + b"\nc\n"
    place.put("long.txt", data)
    chunks = read_chunks(place.partitions("long.txt", len(data), 4))
    assert chunks[0] == b"a\n" + b"B" * 5000 + b"\n"
    assert b"".join(chunks) == data


def test_stream_reads_by_line_and_in_pieces(place):
    data = b"one\ntwo\nthree\nfour\n"
    place.put("lines.txt", data)
    p = place.partitions("lines.txt", len(data), 6)[0]  # "one" and "two" start in [0, 6)
    assert list(p.data_stream) == [b"one\n", b"two\n"]
    q = place.partitions("lines.txt", len(data), 6)[1]  # "three" starts in [6, 12)
    assert q.data_stream.read(2) + q.data_stream.read(1) + q.data_stream.read() == b"three\n"
    assert q.data_stream is q.data_stream  # one stream per partition


# Whole maps -----------------------------------------------------------------------------------
def word_count(obj):
    return sum(len(line.split()) for line in obj.data_stream)


def test_map_over_a_prefix_counts_every_word(place, data_ex):
    texts = {f"corpus/doc{i:02d}.txt": text_with_awkward_lines(seed=i, n_lines=40) for i in range(6)}
    texts["corpus/empty.txt"] = b""
    texts["corpus/tiny.txt"] = b"just two"
    for name, data in texts.items():
        place.put(name, data)
    place.put("elsewhere.txt", b"not in the prefix")
    expected = sum(len(d.split()) for d in texts.values())
    for options in ({}, {"obj_chunk_size": 50}, {"obj_chunk_number": 3}):
        job = data_ex.map(word_count, place.location("corpus/"), chunksize="auto", **options)
        assert sum(job.result(timeout=120)) == expected, options
    # objects smaller than a chunk and empty objects are one chunk each
    job = data_ex.map(lambda obj: (obj.key.rsplit("/", 1)[-1], obj.part, obj.total_parts,
                                   obj.data_byte_range), place.location("corpus/"),
                      obj_chunk_size=1000)
    shapes = {name: rest for name, *rest in job.result(timeout=60)}
    assert shapes["empty.txt"] == [1, 1, (0, -1)]
    assert shapes["tiny.txt"] == [1, 1, (0, 7)]


def test_map_over_keys_globs_and_lithops_dicts(place, data_ex):
    for i in range(4):
        place.put(f"g/part-{i}.csv", f"a,{i}\nb,{i}\n".encode())
    place.put("g/readme.md", b"# not csv\n")

    def first_fields(obj, sep=","):
        return [line.split(sep.encode())[0] for line in obj.data_stream]

    keys = [place.location(f"g/part-{i}.csv") for i in (2, 0)]
    assert data_ex.map(first_fields, keys).result(timeout=60) == [[b"a", b"b"]] * 2
    assert len(data_ex.map(first_fields, place.location("g/*.csv")).result(timeout=60)) == 4
    dicts = [{"obj": place.location("g/readme.md"), "sep": " "}]
    assert data_ex.map(first_fields, dicts).result(timeout=60) == [[b"#"]]


def test_a_function_without_obj_gets_the_chunk_first(place, data_ex):
    place.put("one/a.txt", b"hello\n")
    job = data_ex.map(lambda part, n: (part.data_stream.read(), n), place.location("one/"),
                      extra_args=(5,))
    assert job.result(timeout=60) == [(b"hello\n", 5)]


def test_many_small_objects(place, data_ex):
    names = [f"small/{i:04d}.txt" for i in range(300)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: place.put(n, f"{n} {n[-8:-4]}\n".encode()), names))
    job = data_ex.map(lambda obj: obj.data_stream.read().split()[0].decode(),
                      place.location("small/"), chunksize=25)
    assert job.result(timeout=120) == names  # one task input per object, in key order


# Errors before anything runs -------------------------------------------------------------------
def nothing_was_submitted(ex):
    return ex.storage.list(f"{ex.prefix}/") == []  # not even the function blob


def test_missing_key_prefix_or_path_is_an_error_before_anything_runs(place, data_ex):
    place.put("present/a.txt", b"a\n")
    with pytest.raises(NotFound, match="no such (key|file or directory): .*absent.txt"):
        data_ex.map(word_count, place.location("present/absent.txt")
                    if place.kind == "s3" else place.location("present/") + "absent.txt")
    with pytest.raises(NotFound, match="no objects in"):
        data_ex.map(word_count, place.location("nothing-here/") if place.kind == "s3"
                    else place.location("present/*.csv"))
    assert nothing_was_submitted(data_ex)


def test_missing_bucket_is_an_error_before_anything_runs(moto_endpoint, tmp_path):
    storage = LocalStorage(str(tmp_path / "jobs"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"endpoints": {"s3": moto_endpoint}, "region": REGION}))
    os.environ["CLOUDBUTTON_CONFIG"] = str(cfg)  # the hermetic fixture restores it
    with Executor(workers=1, storage=storage) as ex:
        with pytest.raises(NoSuchBucket, match="no such bucket: no-such-bucket-here"):
            ex.map(word_count, "s3://no-such-bucket-here/prefix/")
        with pytest.raises(NoSuchBucket, match="no-such-bucket-here"):
            ex.map(word_count, ["s3://no-such-bucket-here/key.txt"])
        assert nothing_was_submitted(ex)


def test_bad_locations_and_options_are_refused(data_ex, tmp_path):
    with pytest.raises(TypeError, match="storage"):
        data_ex.map(word_count, "not a location")
    with pytest.raises(TypeError, match="obj_chunk_size"):
        data_ex.map(lambda x: x, [1, 2], obj_chunk_size=10)
    with pytest.raises(ValueError, match="obj_chunk_size must be"):
        data_ex.map(word_count, str(tmp_path), obj_chunk_size=0)
    with pytest.raises(TypeError, match="not both"):
        data_ex.map(word_count, str(tmp_path), obj_chunk_size=5, obj_chunk_number=2)
    with pytest.raises(ValueError, match="obj_newline"):
        data_ex.map(word_count, str(tmp_path), obj_newline="\r\n")
    assert nothing_was_submitted(data_ex)


def test_an_empty_prefix_and_zero_byte_objects(place, data_ex):
    """A prefix whose objects hold 0 bytes gives one empty chunk per object; folder
    markers (keys ending in '/') are no data."""
    for i in range(3):
        place.put(f"zero/{i}.txt", b"")
    if place.kind == "s3":
        place.put("zero/", b"")  # what consoles write for a "folder"
    job = data_ex.map(lambda obj: (obj.data_stream.read(), obj.chunk_size), place.location("zero/"),
                      obj_chunk_size=4)
    assert job.result(timeout=60) == [(b"", 0)] * 3


# Listing: once, on the host, page by page ---------------------------------------------------------
def test_ten_thousand_keys_are_listed_once_in_pages(moto_endpoint, s3_bucket):
    from moto.s3.models import s3_backends

    keys = [f"many/{i:05d}" for i in range(10_000)]
    # Setup only: written straight into the in-process moto server's store (10,000 PUTs
    # over HTTP would take minutes); the listing under test goes over HTTP.
    backend = next(b for accounts in s3_backends.values() for b in accounts.values()
                   if s3_bucket in b.buckets)
    for k in keys:
        backend.put_object(s3_bucket, k, b"x")
    storage = S3Storage(s3_bucket, region=REGION, endpoint_url=moto_endpoint)

    def key_of(obj):
        return obj.key

    with Executor(workers=2, storage=storage, prefix="jobs") as ex:
        where = f"s3://{s3_bucket}/many/"
        # The listing alone (the job's own polls of its storage are LISTs too).
        listing = datamap.plan(key_of, where, chunk_size=None, chunk_number=None, newline="\n",
                               local_files=True, s3=ex.data_service(), lambda_workers=False,
                               extra_args=None)
        assert listing.requests == {"LIST": 10}  # 1,000 keys a page (S3's and moto's page size)
        job = ex.map(key_of, where, chunksize=1000)
        assert job.result(timeout=300) == keys
        host = job.stats["requests"]["host"]
        workers = job.stats["requests"]["workers"]
    assert host["LIST"] >= 10  # the job's own listing is counted in what it cost
    assert "HEAD" not in host or host["HEAD"] <= 2  # the job's own blob check, not the data
    assert "LIST" not in workers  # no task lists the bucket


def test_local_workers_read_s3_with_the_hosts_chain(moto_endpoint, s3_bucket, tmp_path):
    """Local backend, local job storage, data in S3: the host lists with the config's
    endpoint and its credentials; the local workers inherit AWS_* and read with them."""
    S3Place(moto_endpoint, s3_bucket).put("d/x.txt", b"one two\nthree\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"endpoints": {"s3": moto_endpoint}, "region": REGION}))
    os.environ["CLOUDBUTTON_CONFIG"] = str(cfg)
    with Executor(workers=1, storage=LocalStorage(str(tmp_path / "jobs"))) as ex:
        service = ex.data_service()
        assert service == S3Service(region=REGION, endpoint_url=moto_endpoint)
        job = ex.map(word_count, f"s3://{s3_bucket}/d/", obj_chunk_size=5)
        assert sum(job.result(timeout=60)) == 3


def test_a_partition_travels_as_plain_data():
    import pickle

    p = DataPartition({"kind": "s3", "region": REGION}, bucket="b", key="k", path=None, size=10,
                      start=0, stop=5, part=1, total_parts=2, newline="\n")
    blob = pickle.dumps(p)
    assert len(blob) < 400 and b"secret" not in blob.lower()
    q = pickle.loads(blob)
    assert q == p and q.data_byte_range == (0, 4) and q.url == "s3://b/k"


def test_local_paths_need_the_local_backend(tmp_path):
    from cloudbutton_executor.datamap import DataLocationError, plan

    (tmp_path / "f.txt").write_bytes(b"x")
    with pytest.raises(DataLocationError, match="only the local backend"):
        plan(word_count, str(tmp_path), chunk_size=None, chunk_number=None, newline="\n",
             local_files=False, s3=S3Service(), lambda_workers=True)


def test_map_reduce_over_a_prefix(place, data_ex):
    """Lithops' word count: a data-driven map_reduce with chunked objects."""
    for i in range(3):
        place.put(f"wc/{i}.txt", b"a b c\nd e\n" * (i + 2))

    def words(obj):
        return sum(len(line.split()) for line in obj.data_stream)

    total = data_ex.map_reduce(words, place.location("wc/"), sum, obj_chunk_size=7)
    assert total.result(timeout=60) == 5 * (2 + 3 + 4)


def bytes_of_chunk(obj):
    return len(obj.data_stream.read())


def test_each_task_reports_its_read_throughput_and_the_timeline_draws_it(place, data_ex):
    """A data-map task's stats hold the bytes it read from storage and the time it waited
    for them; the widget's timeline rows carry them (hover) and the static timeline labels
    each bar with MB/s. A task that reads nothing has none."""
    from matplotlib.figure import Figure

    from cloudbutton_magic import static_plots
    from cloudbutton_magic.widget_state import JobTracker

    for i in range(3):
        place.put(f"rt/part{i}.txt", b"".join(b"line %06d of %d\n" % (k, i) for k in range(12_000)))
    job = data_ex.map(bytes_of_chunk, place.location("rt/"), obj_chunk_size=80_000)
    sizes = job.result(timeout=60)
    assert sum(sizes) == 3 * 12_000 * len(b"line 000000 of 0\n") and len(sizes) > 3
    for f, n in zip(job, sizes, strict=True):
        # Its chunk, plus the byte before it and the line across its end, from the lookahead.
        assert n <= f.stats["read_bytes"] <= n + partitions.LOOKAHEAD + 1, f.stats
        assert 0 < f.stats["read_s"] < 30
    tracker = JobTracker(job)
    rows = tracker.poll().rows
    assert len(rows) == len(sizes)
    for r in rows:
        st = job[r["bottom"]].stats
        assert r["read_mbs"] == pytest.approx(st["read_bytes"] / 1e6 / st["read_s"])
        assert r["read"] == f"{st['read_bytes'] / 1e6:,.1f} MB at {r['read_mbs']:,.1f} MB/s"
    from bokeh.models import HoverTool

    from cloudbutton_magic.widget import JobWidget

    view = JobWidget(job)
    view.update()
    view.finish()
    drawn = view.plots.timeline_source.data
    assert sorted(drawn["read"]) == sorted(r["read"] for r in rows)
    (hover,) = [t for t in view.plots.timeline.tools if isinstance(t, HoverTool)]
    assert ("read (task)", "@read") in hover.tooltips
    ax = Figure().add_subplot()
    suffix = static_plots._read_labels(ax, rows)
    assert suffix.startswith("\nread per task: median ") and f"{len(rows)} tasks" in suffix
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        f" {r['read_mbs']:,.0f} MB/s" for r in rows)
    unlabelled = [dict(r, read_mbs=math.nan) for r in rows]
    assert static_plots.timeline_png(rows, "t") != static_plots.timeline_png(unlabelled, "t")

    plain = data_ex.map(len, ["abc"])
    assert plain.result(timeout=60) == [3] and "read_bytes" not in plain[0].stats
    (row,) = JobTracker(plain).poll().rows
    assert row["read"] == "" and math.isnan(row["read_mbs"])
    assert static_plots._read_labels(Figure().add_subplot(), [row]) == ""


def drain(obj):
    n = 0
    while True:
        block = obj.data_stream.read(1 << 20)
        if not block:
            return n
        n += len(block)


def host_read_bytes():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's per-process I/O counts")
def test_the_host_never_reads_the_data_itself(tmp_path):
    """A data map's bytes flow through its workers only: the host lists, plans and collects
    (statuses, a few KB) while its tasks read 128 MB. rchar counts every byte the host's
    threads read(); it is taken before the workers end (a reaped child's reads would be
    added to it). Sparse files: no disk, the kernel hands out zeros."""
    root = tmp_path / "sparse"
    root.mkdir()
    for i in range(4):
        with open(root / f"part-{i}.bin", "wb") as f:
            f.truncate(32 << 20)
    with Executor(workers=2, storage=LocalStorage(str(tmp_path / "jobs")), timeout=120) as ex:
        assert ex.map(len, ["warm"]).result(timeout=60) == [4]  # workers started, modules loaded
        before = host_read_bytes()
        job = ex.map(drain, f"{root}/", obj_chunk_size=8 << 20, obj_newline=None)
        assert sum(job.result(timeout=120)) == 128 << 20 and len(job) == 16
        host_read = host_read_bytes() - before
    assert host_read < 4 << 20, f"the host read {host_read / 2**20:.1f} MB"
