"""Secret screening follows what is shipped: a key-shaped value or a credential object is
refused wherever it sits in what is pickled (the six ways past the old, shallow checks),
through the plain API and through the magics, before anything is uploaded."""
from __future__ import annotations

import os
import pickle
import re
import textwrap
import warnings

import pytest
from IPython.core.error import UsageError

from cloudbutton_executor import Executor, SecretError, screening
from test_config import ip  # noqa: F401 - the magics' shell, its jobs in tmp_path

KEY_ID = "AKIA" + "Q7ZX" * 4            # an access key id's shape
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example secret key

# Notebook code: each defines `f` (what is mapped) and the data it reads. Functions are
# made in a namespace named __main__, so they travel by value, as a notebook's do.
BYPASSES = {
    "dict three levels deep": """
        cfg = {"a": {"b": {"c": KEY_ID}}}
        def f(x):
            return cfg["a"]["b"]["c"][:0] + str(x)
    """,
    "object attribute": """
        class Settings:
            pass
        conf = Settings()
        conf.endpoint = "https://example.invalid"
        conf.key = SECRET
        def f(x):
            return conf.key[:0] + str(x)
    """,
    "list index 250": """
        names = ["user%d" % i for i in range(250)] + [KEY_ID]
        def f(x):
            return len(names) + x
    """,
    "bytes": """
        raw = {"blob": SECRET.encode()}
        def f(x):
            return len(raw["blob"]) + x
    """,
    "function globals": """
        DEFAULTS = {"region": "eu-west-1", "keys": [{"id": KEY_ID}]}
        def f(x):
            return DEFAULTS["region"] + str(x)
    """,
    "helper of the mapped function": """
        API = {"client": {"secret": SECRET}}
        def helper(x):
            return len(API["client"]["secret"]) + x
        def f(x):
            return helper(x)
    """,
}


def notebook(source: str) -> dict:
    ns = {"__name__": "__main__", "KEY_ID": KEY_ID, "SECRET": SECRET}
    exec(textwrap.dedent(source), ns)
    return ns


def jobs_in(storage) -> list:
    return storage.children("cloudbutton/jobs/")


@pytest.mark.parametrize("case", list(BYPASSES))
def test_the_plain_api_refuses_a_secret_anywhere_in_the_function(case, storage):
    ns = notebook(BYPASSES[case])
    with Executor(workers=1, storage=storage) as ex:
        with pytest.raises(SecretError, match=r"refusing to ship .*AWS (access key id|secret access key)"):
            ex.map(ns["f"], [1, 2])
    assert jobs_in(storage) == [] and not storage.list("cloudbutton/functions/")


@pytest.mark.parametrize("case", list(BYPASSES))
def test_the_magic_refuses_a_secret_anywhere_in_what_it_ships(case, ip):  # noqa: F811
    ns = notebook(BYPASSES[case])
    ip.user_ns.update({k: v for k, v in ns.items() if not k.startswith("__")})
    with pytest.raises(UsageError, match=r"AWS (access key id|secret access key)"):
        ip.run_line_magic("cloud", "map f [1, 2]")          # the line form: FUNC
    with pytest.raises(UsageError, match=r"AWS (access key id|secret access key)"):
        ip.run_cell_magic("cloud", "map [1, 2] as x", "f(x)")  # the cell form
    from cloudbutton_executor.storage import LocalStorage

    assert jobs_in(LocalStorage()) == []


def test_the_message_says_where_the_secret_is(storage):
    with Executor(workers=1, storage=storage) as ex:
        ns = notebook(BYPASSES["dict three levels deep"])
        with pytest.raises(SecretError, match=r"global 'cfg' of f\(\)\['a'\]\['b'\]\['c'\].*AKIA…"):
            ex.map(ns["f"], [1])
        ns = notebook(BYPASSES["helper of the mapped function"])
        with pytest.raises(SecretError, match=r"global 'API' of helper\(\)\['client'\]\['secret'\]") as info:
            ex.map(ns["f"], [1])
        assert SECRET not in str(info.value)  # the message names where, not what


def test_credential_objects_and_secret_names_at_any_depth(storage):
    import boto3

    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y",
                                    region_name="us-east-1")
    with Executor(workers=1, storage=storage) as ex:
        holder = type("Holder", (), {})()
        holder.inner = {"list": [0, 1, {"s": session}]}
        with pytest.raises(SecretError, match="boto3 Session"):
            ex.map(lambda x: holder, [1])
        ns = notebook("""
            import os
            def helper(x):
                return os.environ.get("HOME")
            ENV = os.environ
            def f(x):
                return helper(x), ENV
        """)
        with pytest.raises(SecretError, match="os.environ"):
            ex.map(ns["f"], [1])
        ns = notebook("""
            db_password = "correct horse battery staple"
            def helper(x):
                return db_password[:x]
            def f(x):
                return helper(x)
        """)
        with pytest.raises(SecretError) as info:
            ex.map(ns["f"], [1])
    # The pickler's message already names its culprit: it is not prefixed a second time.
    assert str(info.value) == (
        "refusing to ship variable 'db_password' (read by helper()): its name says it holds a "
        "secret. Read it inside the task from the worker's own configuration instead.")


def test_inputs_are_screened_too(storage):
    with Executor(workers=1, storage=storage) as ex:
        with pytest.raises(SecretError, match=r"iterdata.*AWS access key id"):
            ex.map(len, ["fine", "also fine", KEY_ID])
        with pytest.raises(SecretError, match=r"AWS secret access key"):
            ex.map(len, [{"deep": [[{"k": SECRET.encode()}]]}] * 70)
    assert jobs_in(storage) == []


def test_look_alikes_are_not_refused(storage):
    """Hex digests, longer words and key-id-like text inside identifiers pass."""
    ns = notebook("""
        SHA = "3f786850e387550fdab836ed7e6dc881de23001b"      # 40 hex digits (git, SHA-1)
        LONG = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYandmore"  # not 40 characters
        NAME = "XAKIAQ7ZXQ7ZXQ7ZXQ7ZX"                           # inside a longer token
        def f(x):
            return (SHA, LONG, NAME, x)
    """)
    with Executor(workers=1, storage=storage) as ex:
        assert ex.map(ns["f"], [1]).result(timeout=60)[0][3] == 1


def test_a_budget_that_runs_out_says_so(storage, monkeypatch):
    monkeypatch.setattr(screening, "BUDGET_BYTES", 4096)
    big = [f"row {i} " * 20 for i in range(200)] + [KEY_ID]  # the key sits past the budget
    with Executor(workers=1, storage=storage) as ex:
        with pytest.warns(screening.ScreeningWarning, match=r"secret screening of function .* stopped "
                                                           r"after .* MB more of what it ships"):
            job = ex.map(lambda x: len(big) + x, [1])
        assert job.result(timeout=60) == [202]
    # Within the budget, the same key is found.
    monkeypatch.setattr(screening, "BUDGET_BYTES", 1 << 20)
    with Executor(workers=1, storage=storage) as ex, warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SecretError):
            ex.map(lambda x: len(big) + x, [1])


def test_the_scan_reads_the_pickle_not_the_objects():
    """What the scan sees is the pickle's bytes: every str and bytes the pickler wrote."""
    for value in (KEY_ID, SECRET, SECRET.encode(), bytearray(SECRET.encode()),
                  {"x": [(1, {"y": SECRET})]}):
        blob = pickle.dumps(value, 5)
        assert screening.scan_bytes(blob) is not None, value
    assert screening.scan_bytes(pickle.dumps("3f786850e387550fdab836ed7e6dc881de23001b", 5)) is None


def test_the_message_names_the_attribute_slot_or_cell_variable_holding_the_secret(storage):
    """The path in the message follows attributes, slots (set ones only) and a cell's
    captured variables; a plain object's ``namespace`` attribute is just an attribute."""
    from cloudbutton_executor.cell import CellTask

    ns = notebook("""
        class Settings:
            pass
        class Slotted:
            __slots__ = ("unset", "key")
        conf = Settings()
        conf.endpoint = "https://example.invalid"
        conf.key = SECRET
        slotted = Slotted()
        slotted.key = KEY_ID
        plugin = Settings()
        plugin.namespace = {"token": KEY_ID}
        def by_attribute(x):
            return conf.key[:0] + str(x)
        def by_slot(x):
            return slotted.key[:0] + str(x)
        def by_namespace(x):
            return plugin.namespace["token"][:0] + str(x)
    """)
    cases = [(ns["by_attribute"], r"global 'conf' of by_attribute\(\)\.key: it holds an AWS secret"),
             (ns["by_slot"], r"global 'slotted' of by_slot\(\)\.key: it holds an AWS access key id"),
             (ns["by_namespace"],
              r"global 'plugin' of by_namespace\(\)\.namespace\['token'\]: it holds an AWS access"),
             (CellTask("cfg['a'][:0] + str(x)", {"cfg": {"a": KEY_ID}, "n": 1}, name="x"),
              r"^refusing to ship variable 'cfg'\['a'\]: it holds an AWS access key id")]
    with Executor(workers=1, storage=storage) as ex:
        for fn, where in cases:
            with pytest.raises(SecretError, match=where):
                ex.map(fn, [1])
    assert jobs_in(storage) == []


def test_a_budget_that_runs_out_says_how_much_was_searched_and_skipped_once(storage, monkeypatch,
                                                                            caplog):
    monkeypatch.setattr(screening, "BUDGET_BYTES", 2 ** 20)
    rows = [f"{i:07d}" * 100 for i in range(4300)]  # 3.0 MB of distinct text, about 2 MB past the budget
    with Executor(workers=1, storage=storage) as ex:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            job = ex.map(lambda x: len(rows) + x, [1])  # the warning names this line
        assert job.result(timeout=60) == [4301]
    [w] = [w for w in seen if issubclass(w.category, screening.ScreeningWarning)]
    m = re.fullmatch(r"secret screening of function \S+<lambda> stopped after 1\.0 MB \(its budget\): "
                     r"(\d+\.\d) MB more of what it ships were not searched for key-shaped strings "
                     r"\(credential objects were still refused\)", str(w.message))
    assert m and 1.8 <= float(m.group(1)) <= 2.2, str(w.message)
    # It names the caller's line, not the package's own code (here the caller is this test;
    # under mutation testing a wrapper of the mutated function sits in between).
    import cloudbutton_executor

    package = os.path.dirname(os.path.realpath(cloudbutton_executor.__file__)) + os.sep
    assert not os.path.realpath(w.filename).startswith(package), (w.filename, w.lineno)
    assert [r.getMessage() for r in caplog.records if r.name == "cloudbutton.screening"] == [str(w.message)]


def test_large_raw_bytes_inputs_are_data_but_what_follows_them_is_searched(storage):
    """Inputs of 64 KiB and more are sent as they are and not searched (data may hold any
    bytes); every other input of the same map still is."""
    from cloudbutton_executor import serialize

    raw = b"." * (serialize._BIG - 20) + b"AKIA" + b"B" * 16  # exactly 64 KiB, a key id at its end
    assert len(raw) == 1 << 16
    small = [b"row"] * 63  # 64 inputs: the many-inputs path
    with Executor(workers=1, storage=storage) as ex:
        assert ex.map(len, [raw, *small]).result(timeout=60)[0] == 1 << 16
        with pytest.raises(SecretError, match=r"iterdata\[2\]\[0\]\[0\]: it holds an AWS access key id"):
            ex.map(len, [raw, b"fine", KEY_ID, *small])


def test_the_line_form_names_the_global_holding_the_secret(ip):  # noqa: F811
    """``%cloud map FUNC``: each global the function reads is checked as a variable first,
    so the message names it, as the cell form does."""
    ns = notebook(BYPASSES["dict three levels deep"])
    ip.user_ns.update({k: v for k, v in ns.items() if not k.startswith("__")})
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("cloud", "map f [1, 2]")
    assert str(info.value).startswith(
        "refusing to ship variable 'cfg'['a']['b']['c']: it holds an AWS access key id (AKIA…)"), \
        str(info.value)


def test_a_secret_in_a_bytearray_is_refused_past_other_bytearrays(storage):
    """Bytearrays are written in a pickle with their own opcode: each 40-byte one is
    looked at, a key is found whether it comes before or after ordinary ones, and the
    message names the input and masks the key."""
    plain = bytearray(b"x" * 40)
    key = bytearray(SECRET.encode())
    tail = ". Credentials never leave this machine: create clients inside the task (workers use " \
           "their own execution role)"
    with Executor(workers=1, storage=storage) as ex:
        for items, where in (([plain, key], "iterdata[1][0][0]"), ([key, plain], "iterdata[0][0][0]"),
                             ([[plain, key, plain[:39] + b"y"]], "iterdata[0][0][0][1]")):
            with pytest.raises(SecretError) as info:
                ex.map(len, items)
            assert str(info.value) == f"refusing to ship {where}: it holds an AWS secret access key (wJal…){tail}"
    assert jobs_in(storage) == []


def test_the_inputs_budget_counts_every_input_it_did_not_search(storage, monkeypatch):
    monkeypatch.setattr(screening, "BUDGET_BYTES", 2 ** 20)
    items = [f"{i:05d}" * 6000 for i in range(100)]  # 100 inputs of 30,000 characters: 3 MB
    with Executor(workers=1, storage=storage) as ex:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            job = ex.map(len, items)
        assert job.result(timeout=60) == [30_000] * 100
    [w] = [w for w in seen if issubclass(w.category, screening.ScreeningWarning)]
    m = re.match(r"secret screening of the inputs stopped after 1\.0 MB \(its budget\): (\d+\.\d) MB more",
                 str(w.message))
    assert m and 1.7 <= float(m.group(1)) <= 1.9, str(w.message)


def test_a_credential_object_is_refused_with_what_to_do_instead(storage):
    import boto3

    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y",
                                    region_name="us-east-1")
    with Executor(workers=1, storage=storage) as ex:
        with pytest.raises(SecretError) as info:
            ex.map(len, [[1, {"s": session}]])
    assert str(info.value) == (
        "refusing to ship iterdata[0]: it holds a boto3 Session, which carries AWS credentials. "
        "Create clients inside the task; workers use their own execution role")
