"""``%%cloud map s3://bucket/prefix/ as obj``: the magic's data-driven map, on local files
and on S3 (moto over HTTP), through a real IPython shell and real local workers."""

import boto3
import pytest
import yaml
from IPython.core.error import UsageError

from test_magics import cell

REGION = "us-east-1"
TEXT = {"a.txt": b"one two\nthree\n", "b.txt": b"four five six\n", "c.txt": b""}


WORDS = "sum(len(line.split()) for line in obj.data_stream)"


def test_cell_map_over_a_local_directory(ip, tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    for name, body in TEXT.items():
        (data / name).write_bytes(body)
    cell(ip, f"map {data}/ as obj -o counts --workers 2", WORDS)
    assert ip.user_ns["counts"] == [3, 3, 0]  # one task per file, in name order
    cell(ip, f"map {data}/ as obj -o parts --obj-chunk-size 4",
         "(obj.key.rsplit('/', 1)[-1], obj.part, len(obj.data_stream.read()))")
    parts = ip.user_ns["parts"]
    assert sum(n for _k, _p, n in parts) == sum(len(b) for b in TEXT.values())
    assert parts[:4] == [("a.txt", 1, 8), ("a.txt", 2, 0), ("a.txt", 3, 6), ("a.txt", 4, 0)]
    ip.user_ns["where"] = str(data / "*.txt")  # a variable holding a location works too
    cell(ip, "map where as obj -o again", WORDS)
    assert ip.user_ns["again"] == [3, 3, 0]


def test_cell_map_over_s3(ip, tmp_path, moto_endpoint, s3_bucket, monkeypatch):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    for name, body in TEXT.items():
        s3.put_object(Bucket=s3_bucket, Key=f"corpus/{name}", Body=body)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"endpoints": {"s3": moto_endpoint}, "region": REGION}))
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(cfg))
    cell(ip, f"map s3://{s3_bucket}/corpus/ as obj --obj-chunk-number 2", WORDS)
    assert sum(ip.user_ns["results"]) == 6 and len(ip.user_ns["results"]) == 5  # 2 + 2 + 1 (empty)


def test_line_map_of_a_lithops_function(ip, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_bytes(b"k,1\nk,2\n")
    ip.run_cell("def first(obj):\n    return [l.split(b',')[0] for l in obj.data_stream]")
    ip.run_line_magic("cloud", f"map first {tmp_path}/d/ -o firsts")
    assert ip.user_ns["firsts"] == [[b"k", b"k"]]


def test_bad_data_maps_are_refused_before_anything_runs(ip, tmp_path):
    with pytest.raises(UsageError, match="no such file or directory: .*nowhere"):
        cell(ip, f"map {tmp_path}/nowhere/ as obj", WORDS)
    with pytest.raises(UsageError, match="--obj-chunk-size and --obj-chunk-number split storage"):
        cell(ip, "map [1, 2] as obj --obj-chunk-size 10", WORDS)
    with pytest.raises(UsageError, match="obj_chunk_size must be an integer from 1"):
        cell(ip, f"map {tmp_path}/ as obj --obj-chunk-size 0", WORDS)
    ex = ip.runner.executor(ip.runner.settings())
    assert ex.jobs(10) == []
