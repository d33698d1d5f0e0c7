"""One config schema: the executor, the magic, the Jupyter server's REST API, the config
file, the environment and the CLI accept the same values and refuse the same ones, with
an error that names the setting."""
from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from cloudbutton_executor import Executor, cli, config
from cloudbutton_jupyter.manager import InvalidInput, validate_config
from cloudbutton_magic.magics import HELP, PARSERS, CloudMagics

# (setting, below its range, lowest, highest, above its range)
BOUNDS = [
    ("retries", -1, 0, 10, 11),
    ("memory_mb", 127, 128, 10_240, 10_241),
    ("workers", 0, 1, 10_000, 10_001),
    ("timeout", 0, 0.001, 86_400, 86_401),
]


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """An IPython shell with the magics, its jobs and config in tmp_path."""
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "none.yaml"))
    shell = InteractiveShell.instance()
    shell.register_magics(CloudMagics(shell))
    return shell


def runner_of(shell):
    return shell.magics_manager.registry["CloudMagics"].runner


def test_every_default_is_valid_and_every_setting_explained():
    for key, s in config.SETTINGS.items():
        assert s.check(s.default) == s.default, key
        assert s.help and s.key == key


@pytest.mark.parametrize("key, below, low, high, above", BOUNDS)
def test_the_schema_bounds_hold_at_every_entry_point(key, below, low, high, above, ip, storage):
    shell, runner = ip, runner_of(ip)
    message = f"{key} must be"
    # The schema itself, from Python values and from text.
    for ok in (low, high):
        assert config.check(key, ok) == ok
        assert config.RUN[key].parse(str(ok)) == ok
    for bad in (below, above):
        with pytest.raises(config.ConfigError, match=message):
            config.check(key, bad)
    # The Jupyter server's REST validation.
    assert validate_config({key: high})[key] == high
    for bad in (below, above):
        with pytest.raises(InvalidInput, match=message):
            validate_config({key: bad})
    # The magic's options and %cloud config.
    flag = config.RUN[key].flag or f"--{key}"
    shell.run_cell_magic("cloud", f"map [1] {flag} {high} --dry-run", "item")
    for bad in (below, above):
        with pytest.raises(UsageError, match=message):
            shell.run_cell_magic("cloud", f"map [1] {flag} {bad}", "item")
        with pytest.raises(UsageError, match=message):
            runner.configure([f"{key}={bad}"])
    # The executor (workers: the backend is made at once, so only the refusals).
    with Executor(workers=1, storage=storage) as ex:
        if key != "workers":
            assert ex._job_options(**{key: high})[key] == high
            for bad in (below, above):
                with pytest.raises(ValueError, match=message):
                    ex.map(abs, [1], **{key: bad})
    for bad in (below, above):
        with pytest.raises(ValueError, match=message):
            Executor(storage=storage, **{"workers": 1, key: bad})


def test_chunksize_and_backend_take_words(ip):
    runner = runner_of(ip)
    assert config.RUN["chunksize"].parse("auto") == "auto"
    assert validate_config({"chunksize": "auto"})["chunksize"] == "auto"
    for bad in ("0", "some", "1.5"):
        with pytest.raises(config.ConfigError, match="chunksize must be a positive integer or 'auto'"):
            config.RUN["chunksize"].parse(bad)
    with pytest.raises(UsageError, match="backend must be 'local' or 'lambda'"):
        runner.configure(["backend=k8s"])
    with pytest.raises(ValueError, match="backend must be 'local' or 'lambda'"):
        Executor(backend="k8s")


def test_lambda_timeout_is_capped_for_the_lambda_backend():
    assert validate_config({"backend": "local", "timeout": 1000})["timeout"] == 1000
    with pytest.raises(InvalidInput, match="timeout must be at most 900 s on Lambda"):
        validate_config({"backend": "lambda", "timeout": 1000})
    with pytest.raises(config.ConfigError, match="timeout must be at most 900 s on Lambda"):
        config.from_dict({"backend": "lambda", "timeout": 901})


@pytest.mark.parametrize("body, needle", [
    ({"lambda": {"function_name": "../../x"}}, "lambda.function_name must be 1-64 letters"),
    ({"lambda": {"layer_name": "a/b"}}, "lambda.layer_name"),
    ({"lambda": {"role_name": "../r"}}, "lambda.role_name"),
    ({"bucket": "../bucket"}, "bucket must be an S3 bucket name"),
    ({"region": "../../etc"}, "region must be an AWS region name"),
    ({"profile": "a/../b"}, "profile must be an AWS profile name"),
])
def test_path_like_names_are_refused(body, needle):
    with pytest.raises(InvalidInput, match=needle.replace(".", r"\.")):
        validate_config(body)
    with pytest.raises(config.ConfigError):
        config.from_dict(body)


def test_the_prefix_is_a_key_prefix_without_dot_parts():
    assert config.from_dict({"prefix": "/team/a/"}).prefix == "team/a"
    for bad in ("../x", "a/../b", "a//b", "a/./b"):
        with pytest.raises(config.ConfigError, match="prefix must be an S3 key prefix"):
            config.from_dict({"prefix": bad})


def test_the_environment_sets_run_defaults_over_the_file(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("retries: 1\nchunksize: 4\n")
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(path))
    monkeypatch.setenv("CLOUDBUTTON_RETRIES", "2")
    monkeypatch.setenv("CLOUDBUTTON_CHUNKSIZE", "auto")
    assert config.load().defaults == {"retries": 2, "chunksize": "auto"}
    monkeypatch.setenv("CLOUDBUTTON_RETRIES", "lots")
    with pytest.raises(config.ConfigError, match=r"\$CLOUDBUTTON_RETRIES: retries must be"):
        config.load()


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(config.ConfigError, match="unknown config keys: colour"):
        config.from_dict({"colour": "red"})
    with pytest.raises(config.ConfigError, match=r"unknown lambda keys: lambda\.memroy"):
        config.from_dict({"lambda": {"memroy": 512}})
    with pytest.raises(config.ConfigError, match=r"endpoints\.s4 is not a service"):
        config.from_dict({"endpoints": {"s4": "http://127.0.0.1:1"}})
    with pytest.raises(TypeError, match="unknown option.*runtime_mem"):
        Executor(runtime_mem=256)  # (runtime_memory is Lithops' name for memory_mb: accepted)


def test_the_cli_checks_deploy_options_with_the_schema(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["deploy", "--memory", "64"])
    assert info.value.code == 2
    assert "lambda.memory must be an integer from 128 to 10240, got 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["deploy", "--timeout", "901"])
    assert "lambda.timeout must be an integer from 1 to 900" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--region", "../x", "status"])
    assert "region must be an AWS region name" in capsys.readouterr().err


def test_magic_help_is_made_from_the_parsers():
    for parser in PARSERS.values():
        assert parser.prog in HELP and parser.description.split(";")[0][:40] in HELP
    for key, s in config.RUN.items():
        assert (s.flag or f"--{key}") in HELP and s.help.split("(")[0].strip()[:30] in HELP


@pytest.mark.parametrize("call, needle", [
    (lambda ex: ex.jobs(limit=-1), "jobs(): limit must be an integer from 1 to 1000, got -1"),
    (lambda ex: ex.jobs(limit="a"), "jobs(): limit must be an integer from 1 to 1000, got 'a'"),
    (lambda ex: ex.map(abs, [1], extra_args="ab"),
     "map(): extra_args must be a tuple of positional arguments or a dict"),
    (lambda ex: ex.map(abs, [1], extra_args={1: 2}), "map(): extra_args must be"),
    (lambda ex: ex.map(abs, [1], label=5), "map(): label must be 1-512 printable characters"),
    (lambda ex: ex.map(abs, [1], retries="a"), "map(): retries must be an integer from 0 to 10, got 'a'"),
    (lambda ex: ex.map(abs, [1], retries=-3), "map(): retries must be an integer from 0 to 10, got -3"),
    (lambda ex: ex.attach("20260101-120000-abcdef\n"), "attach(): job_id must be a job id like"),
    (lambda ex: ex.attach(5), "attach(): job_id must be a job id like"),
])
def test_every_api_option_is_checked_with_the_schema(call, needle, storage):
    with Executor(workers=1, storage=storage) as ex:
        with pytest.raises((config.ConfigError, TypeError), match=re.escape(needle)):
            call(ex)


@pytest.mark.parametrize("kwargs, needle", [
    ({"prefix": "../x"}, "Executor(): prefix must be an S3 key prefix"),
    ({"prefix": "a/./b"}, "Executor(): prefix must be an S3 key prefix"),
    ({"auto_batch_target_s": "x"}, "Executor(): auto_batch_target_s must be a number"),
    ({"auto_batch_target_s": 0}, "Executor(): auto_batch_target_s must be a number"),
    ({"storage": "/tmp"}, "Executor(): storage must be a Storage object"),
])
def test_executor_options_are_checked(kwargs, needle):
    with pytest.raises((config.ConfigError, TypeError), match=re.escape(needle)):
        Executor(workers=1, **kwargs)


def test_the_magic_cli_and_rest_check_job_ids_and_limits(ip, capsys):
    for line in ("attach 20260101-120000-abcdefg", "cancel ../../x", "jobs -n -1", "jobs -n a"):
        with pytest.raises(UsageError, match="job_id must be a job id|limit must be an integer"):
            ip.run_line_magic("cloud", line)
    from cloudbutton_jupyter.manager import CloudManager

    manager = CloudManager()
    for bad in ("20260101-120000-abcdef\n", "../x", 7):
        with pytest.raises(InvalidInput, match="job_id must be a job id"):
            manager.check_job_id(bad)
    for bad in ("0", "many", "1.5", "-1"):
        with pytest.raises(InvalidInput, match="limit must be an integer from 1 to 1000"):
            manager.list_jobs(bad)
    assert cli.main(["clean", "--job", "20260101-120000-abcdef/../x"]) == 2
    assert "--job: job_id must be a job id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["jobs", "--limit", "-1"])
    assert "limit must be an integer from 1 to 1000" in capsys.readouterr().err


def test_a_generator_that_raises_midway_reports_its_own_exception(storage):
    def items():
        yield 1
        yield 2
        raise TypeError("the source ran dry")

    with Executor(workers=1, storage=storage) as ex:
        with pytest.raises(TypeError, match="the source ran dry") as info:
            ex.map(abs, items())
        assert "iterdata must be" not in str(info.value)
        assert "after 2 items" in "".join(getattr(info.value, "__notes__", []))
        with pytest.raises(TypeError, match="iterdata must be an iterable"):
            ex.map(abs, 5)
