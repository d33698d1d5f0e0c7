"""What the capture refuses to ship: credential-shaped values, credential objects, copies of
the environment, and long strings in variables whose name says they hold a secret. The
checks are the executor's (``screening``): each variable as it is (``describe_value``), then
everything its pickle holds, at any depth."""
import os

import pytest

from cloudbutton_executor import screening, serialize
from cloudbutton_magic.capture import CaptureError, capture

looks_like_secret = screening.describe_value

KEY_ID = "AKIA" + "Q7" * 8
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def ship(name, value):
    """Capture a cell that reads ``name``; returns the captured dict or raises CaptureError."""
    captured, _report = capture(f"{name}\n", {name: value})
    return captured


# The secret-name rule ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["client_secret", "DB_PASSWORD", "passwd", "github_Token",
                                  "aws_credentials", "PRIVATE_KEY", "my_private_key_pem"])
def test_long_string_in_a_secret_named_variable_is_refused(name):
    value = "x" * 12  # no other rule would catch it
    assert looks_like_secret(value) is None
    with pytest.raises(CaptureError, match=rf"variable {name!r}: its name says it holds a secret"):
        ship(name, value)


@pytest.mark.parametrize("name, value", [
    ("api_token", "x" * 11),  # too short to be a secret
    ("password_hint", ""),
    ("token_count", 123456789012345),  # not a string
    ("secret_paths", ["a-long-path-name"]),  # a list of strings: not the name rule's business
    ("privatekey", "x" * 20),  # not one of the names
    ("settings", "x" * 40),
])
def test_names_or_values_outside_the_rule_travel(name, value):
    assert ship(name, value) == {name: value}


# Values that look like credentials --------------------------------------------------------
@pytest.mark.parametrize("value, why", [
    (KEY_ID, "contains an AWS access key id"),
    (f"key={KEY_ID};", "contains an AWS access key id"),
    ("ASIA" + "B" * 16, "contains an AWS access key id"),
    ("AROA" + "9" * 16, "contains an AWS access key id"),
    (SECRET, "looks like an AWS secret access key"),
    ("G1g" * 13 + "h", "looks like an AWS secret access key"),  # upper, lower, digit
    ("G/g" * 13 + "h", "looks like an AWS secret access key"),  # upper, lower, slash
    ("G+g" * 13 + "h", "looks like an AWS secret access key"),  # upper, lower, plus
    ("a" * 39 + "B/", None),  # 41 characters
    (os.environ, "it is os.environ"),
    ({"AWS_SECRET_ACCESS_KEY": "s"}, "holds AWS credentials"),
    ({"AWS_SESSION_TOKEN": "s"}, "holds AWS credentials"),
])
def test_credential_shaped_values(value, why):
    found = looks_like_secret(value)
    if why is None:
        assert found is None
        assert ship("value", value) == {"value": value}
        return
    assert found is not None and why in found, found
    with pytest.raises(CaptureError) as info:  # and the capture refuses it, saying why
        ship("value", value)
    assert str(info.value) == (
        f"refusing to ship variable 'value': {found}. Credentials never leave this machine; "
        "create clients inside the cell (workers use their own role).")


@pytest.mark.parametrize("value, where, what", [
    ({"outer": {"key": KEY_ID}}, "['outer']['key']", "an AWS access key id"),
    ([1, (2, SECRET)], "[1][1]", "an AWS secret access key"),
    ({"a", KEY_ID}, " (an element)", "an AWS access key id"),
    (frozenset([KEY_ID]), " (an element)", "an AWS access key id"),
    ([SECRET], "[0]", "an AWS secret access key"),
])
def test_credentials_inside_containers_are_found_in_the_pickle(value, where, what):
    """Inside a container the pickle is searched: the message says where, not what."""
    assert looks_like_secret(value) is None  # nothing on the surface
    with pytest.raises(CaptureError) as info:
        ship("value", value)
    assert str(info.value).startswith(f"refusing to ship variable 'value'{where}: it holds {what} (")
    assert KEY_ID not in str(info.value) and SECRET not in str(info.value)


def test_exact_reasons():
    assert looks_like_secret(os.environ) == "it is os.environ"
    assert looks_like_secret({"AWS_SESSION_TOKEN": 1}) == "it holds AWS credentials (AWS_SECRET_ACCESS_KEY)"
    assert looks_like_secret(KEY_ID) == "it contains an AWS access key id"
    assert looks_like_secret(SECRET) == "it looks like an AWS secret access key"


def test_the_name_rule_says_what_to_do():
    with pytest.raises(CaptureError) as info:
        ship("db_password", "correct horse battery")
    assert str(info.value) == (
        "refusing to ship variable 'db_password': its name says it holds a secret. "
        "Read it inside the task from the worker's own configuration instead.")


def test_report_rows_sizes_and_the_size_warning():
    import sqlite3
    import types

    captured, report = capture("a + len(b) + m.x\n", {"a": 1, "b": "xyz", "m": types.ModuleType("m")})
    assert [(r["name"], r["type"]) for r in report.rows] == [("a", "int"), ("b", "str"), ("m", "module m")]
    sizes = {r["name"]: r["size"] for r in report.rows}
    assert sizes["a"] == len(serialize.dumps(1)) and sizes["b"] == len(serialize.dumps("xyz"))
    assert sizes["m"] == 0 and report.warnings == []  # modules are re-imported, not shipped
    _, unmeasured = capture("a\n", {"a": 1}, measure=False)
    assert unmeasured.rows == [{"name": "a", "type": "int", "size": 0}]
    # Values over the large-value threshold are stored apart (once), so they count for no
    # function blob; many values under it still add up to a warning.
    _, big = capture("blob\n", {"blob": b"x" * (51 * 1024 * 1024)})
    assert big.rows[0]["stored"] and big.total == 0 and big.warnings == []
    nine = {f"v{i}": bytes([i]) * (9 * 1024 * 1024) for i in range(6)}
    _, many = capture(" + ".join(nine) + "\n", nine)
    assert len(many.warnings) == 1 and many.warnings[0].startswith("the captured variables total 54")
    with pytest.raises(CaptureError) as info:
        ship("conn", sqlite3.connect(":memory:"))
    assert str(info.value).startswith("cannot ship variable 'conn' (type sqlite3.Connection): ")
    assert str(info.value).endswith("Create it inside the cell instead, or pass what it holds "
                                    "(e.g. a path or plain data).")


@pytest.mark.parametrize("value", [
    "AKIA" + "Q" * 15,  # one character short
    "AKIA" + "q" * 16,  # lower case
    "XAKIA" + "Q" * 16,  # not at a word boundary
    "BKIA" + "Q" * 16,  # not a key id prefix
    "a" * 40,  # no upper case, no digit
    "A" * 20 + "a" * 20,  # no digit, / or +
    "g1" * 20,  # no upper case
    "G1" * 20,  # no lower case
    "0123456789abcdef0123456789ABCDEF01234567",  # 40 hex digits: a sha1, not a secret
    "G1g" * 13 + "h!",  # 41 characters
])
def test_near_misses(value):
    assert looks_like_secret(value) is None


def test_no_depth_or_length_stops_the_search():
    """What the old surface check missed (a third level, past the 200th element) the
    search of the pickle finds."""
    for value, where in (([[[KEY_ID]]], "[0][0][0]"), ({"a": {"b": {"c": KEY_ID}}}, "['a']['b']['c']"),
                         ([0] * 250 + [KEY_ID], "[250]"),
                         ({**{f"k{i}": 0 for i in range(200)}, "last": KEY_ID}, "['last']")):
        with pytest.raises(CaptureError, match=rf"variable 'value'{__import__('re').escape(where)}: "
                                               "it holds an AWS access key id"):
            ship("value", value)


def test_copy_of_the_environment(monkeypatch):
    for i in range(8):
        monkeypatch.setenv(f"CB_TEST_VAR_{i}", "v")
    copy = {k: "v" for k in os.environ}
    copy.setdefault("PATH", "/bin")
    assert looks_like_secret(copy) == "it is a copy of os.environ"
    no_path = {k: v for k, v in copy.items() if k != "PATH"}
    assert looks_like_secret(no_path) is None
    names = sorted(k for k in os.environ if k != "PATH")[:7]
    # 8 keys, PATH among them, all from the environment: the smallest copy.
    assert looks_like_secret(dict.fromkeys(names + ["PATH"], "")) == "it is a copy of os.environ"
    assert looks_like_secret(dict.fromkeys(names[:6] + ["PATH"], "")) is None  # 7 keys
    # 10 keys, 8 of them (80 %) from the environment: a copy; 7 of 10: not.
    assert looks_like_secret(dict.fromkeys(names + ["PATH", "mine1", "mine2"], "")) \
        == "it is a copy of os.environ"
    assert looks_like_secret(dict.fromkeys(names[:6] + ["PATH", "m1", "m2", "m3"], "")) is None


def test_credential_objects_are_refused_by_type_and_by_the_pickler():
    import boto3
    import botocore.credentials

    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y",
                                    region_name="us-east-1")
    client = session.client("s3", endpoint_url="http://127.0.0.1:9")
    creds = botocore.credentials.Credentials("id", "secret")
    for obj, name in [(session, "boto3.session.Session"), (client, "S3"),
                      (creds, "botocore.credentials.Credentials"),
                      (creds.get_frozen_credentials(), "ReadOnlyCredentials"),
                      (session._session, "botocore.session.Session")]:
        why = looks_like_secret(obj)
        assert why is not None and "carries AWS credentials" in why, why
        with pytest.raises(serialize.SecretError, match="carries AWS credentials"):
            serialize.dumps({"deep": [obj]})
        with pytest.raises(CaptureError, match=r"refusing to ship variable 'thing'"):
            ship("thing", obj)

    class Holder:  # hidden in an attribute: only the pickler can find it
        def __init__(self):
            self.c = creds

    with pytest.raises(CaptureError, match="refusing to ship variable 'h'.*Credentials"):
        ship("h", Holder())
    assert screening.credential_type(object()) is None


def test_the_path_skips_other_bytes_and_cycles():
    cyclic = []
    cyclic.append(cyclic)
    cyclic.append(KEY_ID)
    for value, where in (({"a": b"plain bytes", "b": KEY_ID.encode()}, "['b']"), (cyclic, "[1]")):
        with pytest.raises(CaptureError) as info:
            ship("value", value)
        assert str(info.value).startswith(f"refusing to ship variable 'value'{where}: it holds an "
                                          "AWS access key id ("), (where, str(info.value))


def test_the_search_for_where_a_secret_sits_is_bounded():
    """The walk that names the place visits at most 200,000 objects (the list, then its
    items in order); past that the message names the variable alone. The value is refused
    either way."""
    walked = 200_000
    found = [0] * (walked - 2) + [KEY_ID]  # the list and 199,998 items before the key: 200,000
    with pytest.raises(CaptureError, match=rf"^refusing to ship variable 'value'\[{walked - 2}\]: it holds"):
        ship("value", found)
    with pytest.raises(CaptureError, match=r"^refusing to ship variable 'value': it holds an AWS access"):
        ship("value", [0] * (walked - 1) + [KEY_ID])
    with pytest.raises(CaptureError, match=r"^refusing to ship variable 'value'\[150000\]: it holds"):
        ship("value", [0] * 150_000 + [KEY_ID])


@pytest.mark.parametrize("value", ["é" * 40, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEé",
                                   "Ключ" * 10])
def test_forty_characters_of_other_alphabets_are_not_a_secret_key(value):
    assert looks_like_secret(value) is None
    assert ship("value", value) == {"value": value}


def test_the_capture_report_warns_of_live_resources_and_of_a_large_total(tmp_path):
    from cloudbutton_magic.capture import WARN_TOTAL_BYTES, CaptureReport, check_and_measure

    data = tmp_path / "data.txt"
    data.write_text("x")
    with open(data) as fh:
        _, report = capture("fh\n", {"fh": fh})
    assert report.warnings == [f"'fh' is an open file handle ({data}, mode 'r'): each worker gets a "
                               "copy of what it holds now, not the file (writes stay on the worker); open it inside the cell"], \
        report.warnings

    overhead = big_bytes_overhead()

    def total_warnings(size: int) -> list[str]:
        """The warnings for one variable whose pickle is ``size`` bytes (none stored apart)."""
        report = CaptureReport()
        check_and_measure({"v": b"x" * (size - overhead)}, report, large_bytes=2 ** 63)
        assert report.total == size
        return report.warnings

    assert total_warnings(WARN_TOTAL_BYTES) == []
    assert total_warnings(WARN_TOTAL_BYTES + 1) == [
        "the captured variables total 50.0 MB: every task downloads them; consider passing "
        "large data through the iterable or reading it inside the task"]


def big_bytes_overhead() -> int:
    """How many bytes the pickle of a large bytes value adds to it, as the report counts
    (the same for every size from 64 KiB: such bytes are written outside pickle frames)."""
    _, probe = capture("v\n", {"v": b"x" * 2 ** 20})
    return probe.rows[0]["size"] - 2 ** 20


def test_values_over_the_large_value_threshold_are_stored_apart_exactly_past_it():
    from cloudbutton_executor import protocol

    limit = protocol.LARGE_VALUE_BYTES
    overhead = big_bytes_overhead()
    _, at = capture("v\n", {"v": b"x" * (limit - overhead)})
    _, past = capture("v\n", {"v": b"x" * (limit + 1 - overhead)})
    assert at.rows[0]["size"] == limit and "stored" not in at.rows[0] and at.total == limit
    assert past.rows[0]["size"] == limit + 1 and past.rows[0]["stored"] and past.total == 0


class Handle:
    """A library object whose pickling error ends with a full stop."""

    def __reduce__(self):
        raise TypeError("Handle objects cannot be pickled.")


def test_an_unpicklable_variable_is_named_in_one_sentence():
    with pytest.raises(CaptureError) as info:
        ship("h", Handle())
    assert str(info.value) == (
        "cannot ship variable 'h' (type test_capture_secrets.Handle): Handle objects cannot be "
        "pickled. Create it inside the cell instead, or pass what it holds (e.g. a path or plain data).")
