"""Data on Lambda: the worker's IAM policy reads only the data prefixes named at deploy
(``cloudbutton deploy --data s3://bucket/prefix``), and a data-driven map runs in the
emulator (AWS's runtime client, only what Lambda has) reading its chunks from moto."""
import io
import json

import boto3
import pytest

from aws_fixtures import BUCKET, FUNCTION, PREFIX, REGION
from cloudbutton_executor import cli
from cloudbutton_executor.backends.aws_lambda.iam import access_policy, data_prefix, data_urls

ROLE = f"{FUNCTION}-role"


def statements(policy):
    return {st["Sid"]: st for st in policy["Statement"]}


def test_data_prefixes_widen_the_policy_by_exactly_what_is_named():
    base = access_policy(BUCKET, PREFIX, REGION, "123456789012", FUNCTION)
    policy = access_policy(BUCKET, PREFIX, REGION, "123456789012", FUNCTION,
                           data=["s3://corpus-a/text", "s3://corpus-a/more/", "s3://corpus-b/x/y"])
    added = [st for st in policy["Statement"] if st not in base["Statement"]]
    assert statements(policy)["DataRead"] == {
        "Sid": "DataRead", "Effect": "Allow", "Action": "s3:GetObject",  # read only: no put, no delete
        "Resource": ["arn:aws:s3:::corpus-a/more/*", "arn:aws:s3:::corpus-a/text/*",
                     "arn:aws:s3:::corpus-b/x/y/*"]}
    assert statements(policy)["DataList0"] == {
        "Sid": "DataList0", "Effect": "Allow", "Action": "s3:ListBucket",
        "Resource": "arn:aws:s3:::corpus-a",
        "Condition": {"StringLike": {"s3:prefix": ["more/*", "text/*"]}}}
    assert statements(policy)["DataList1"]["Condition"] == {"StringLike": {"s3:prefix": ["x/y/*"]}}
    assert len(added) == 3
    for st in added:  # never a wildcard bucket, never every resource
        for r in st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]:
            assert r != "*" and r.split(":::", 1)[1].split("/")[0] in ("corpus-a", "corpus-b")
    # a whole bucket is named as such, and what a deployed policy grants reads back
    whole = access_policy(BUCKET, PREFIX, REGION, "1", FUNCTION, data=["s3://corpus-c"])
    assert statements(whole)["DataRead"]["Resource"] == ["arn:aws:s3:::corpus-c/*"]
    assert data_urls(policy) == ["s3://corpus-a/more/", "s3://corpus-a/text/", "s3://corpus-b/x/y/"]
    assert data_urls(base) == []


@pytest.mark.parametrize("url, culprit", [
    ("s3://*/", "not an S3 bucket name"), ("s3://corpus/*.txt", "no \\* \\? or \\$"),
    ("corpus/text", "takes s3://bucket/prefix"), ("s3:///text", "not an S3 bucket name"),
    ("s3://Corpus/text", "not an S3 bucket name"), ("s3://corpus/a?b", "no \\* \\? or \\$"),
])
def test_bad_data_prefixes_are_refused(url, culprit, capsys):
    with pytest.raises(ValueError, match=culprit):
        data_prefix(url)
    with pytest.raises(SystemExit):  # before anything is deployed
        cli.main(["deploy", "--data", url], out=io.StringIO())
    assert culprit.replace("\\", "") in capsys.readouterr().err


def role_policy(moto_endpoint):
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=REGION)
    doc = iam.get_role_policy(RoleName=ROLE, PolicyName="cloudbutton-access")["PolicyDocument"]
    return json.loads(doc) if isinstance(doc, str) else doc


def test_deploy_data_widens_keeps_and_takes_back(deployed, lambda_config, moto_endpoint):
    out = io.StringIO()
    try:
        assert cli.main(["deploy", "--data", "s3://corpus-a/text/", "--data", "s3://corpus-b/logs"],
                        out=out) == 0
        assert "read s3://corpus-a/text/" in out.getvalue()
        assert data_urls(role_policy(moto_endpoint)) == ["s3://corpus-a/text/", "s3://corpus-b/logs/"]
        assert cli.main(["deploy"], out=io.StringIO()) == 0  # a plain deploy keeps them
        assert data_urls(role_policy(moto_endpoint)) == ["s3://corpus-a/text/", "s3://corpus-b/logs/"]
    finally:
        assert cli.main(["deploy", "--no-data"], out=io.StringIO()) == 0
    assert data_urls(role_policy(moto_endpoint)) == []


def test_a_data_map_runs_on_lambda(lambda_ex, moto_endpoint):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket="cb-data-corpus")
    docs = {f"docs/{i}.txt": ("alpha beta\n" * (i + 1) + "gamma").encode() for i in range(5)}
    for key, body in docs.items():
        s3.put_object(Bucket="cb-data-corpus", Key=key, Body=body)

    def count(obj):
        return obj.key, obj.part, sum(len(line.split()) for line in obj.data_stream)

    out = lambda_ex.map(count, "s3://cb-data-corpus/docs/", obj_chunk_size=16).result(timeout=120)
    assert sum(n for _k, _p, n in out) == sum(len(b.split()) for b in docs.values())
    assert {k for k, _p, _n in out} == set(docs)
    assert max(p for _k, p, _n in out) > 1  # objects were split


def test_tasks_store_by_reference_on_lambda(lambda_ex):
    """A Lambda task's storage API writes where its policy lets it (beside its status),
    and the host's poller takes those objects for no status."""
    def store(x, storage):
        return storage.put_cloudobject(b"v" * x)

    refs = lambda_ex.map(store, [1, 2, 3]).result(timeout=120)
    host = lambda_ex.object_storage()
    assert [host.get_cloudobject(r) for r in refs] == [b"v", b"vv", b"vvv"]
    assert all("/tasks/" in r.key for r in refs)
