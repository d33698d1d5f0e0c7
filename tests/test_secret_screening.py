"""Secret screening follows what is shipped: a key-shaped value or a credential object is
refused wherever it sits in what is pickled (the six ways past the old, shallow checks),
through the plain API and through the magics, before anything is uploaded."""
from __future__ import annotations

import pickle
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
        with pytest.raises(SecretError, match="variable 'db_password'.*name says it holds a secret"):
            ex.map(ns["f"], [1])


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
