"""What a layer (or an image's site-packages) keeps: public ``testing`` modules and test
suites that code imports stay; other test suites, caches and what the runtime or the
function zip provides go, even when a synced package pulls it in."""
import io
import os
import zipfile

from cloudbutton_executor import packaging


def _tree(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def test_strip_keeps_public_testing_modules_and_test_suites_that_code_imports(tmp_path):
    site = str(tmp_path / "python")
    _tree(site, {
        "numlike/__init__.py": "from . import testing\n",
        "numlike/testing/__init__.py": "from ._private.utils import assert_close\n",  # public API
        "numlike/testing/_private/utils.py": "def assert_close(a, b): pass\n",
        "numlike/core/tests/test_core.py": "def test_x(): pass\n",               # a test suite
        "numlike/tests/__init__.py": "",
        "numlike/__pycache__/x.cpython-311.pyc": "",
        "scilike/special/_precompute/data.py": "from scilike.special.tests.test_f import mp_f\n",
        "scilike/special/tests/test_f.py": "def mp_f(): pass\n",                 # imported: kept
        "scilike/stats/_helper.py": "from .test import fixtures\n",              # relative import
        "scilike/stats/test/fixtures.py": "X = 1\n",
        "scilike/io/tests/test_io.py": "from scilike.io.tests import data\n",   # only tests import it
        "pandaslike/testing.py": "from pandaslike._testing import assert_frame_equal\n",
        "pandaslike/_testing/__init__.py": "def assert_frame_equal(a, b): pass\n",
        "pandaslike/tests/frame/test_frame.py": "import pandaslike.tests.frame\n",
        "tests/__init__.py": "",                                                 # top-level: kept
        "numlike-1.0.dist-info/tests/odd.txt": "metadata is never touched\n",
    })
    removed = packaging.strip_tree(site)
    kept = {os.path.relpath(os.path.join(d, f), site) for d, _, fs in os.walk(site) for f in fs}
    assert removed > 0
    for path in ("numlike/testing/__init__.py", "numlike/testing/_private/utils.py",
                 "scilike/special/tests/test_f.py", "scilike/stats/test/fixtures.py",
                 "pandaslike/testing.py", "pandaslike/_testing/__init__.py", "tests/__init__.py",
                 "numlike-1.0.dist-info/tests/odd.txt"):
        assert path in kept, path
    for path in ("numlike/core/tests/test_core.py", "numlike/tests/__init__.py",
                 "numlike/__pycache__/x.cpython-311.pyc", "scilike/io/tests/test_io.py",
                 "pandaslike/tests/frame/test_frame.py"):
        assert path not in kept, path


def test_provided_distributions_never_enter_a_layer(monkeypatch):
    """joblib requires cloudpickle: pip installs it, the layer leaves it out (our function zip
    brings the host's cloudpickle); a real build from the package registry (wheels cached)."""
    import importlib.metadata as md

    from aws_fixtures import WHEEL_CACHE

    monkeypatch.setenv("CLOUDBUTTON_WHEEL_CACHE", WHEEL_CACHE)  # git-ignored, kept between runs
    joblib = md.version("joblib")
    assert any(r.startswith("cloudpickle") for r in md.requires("joblib") or [])
    layer = packaging.build_layer({"joblib": joblib}, packaging.runtime_for_host(), "x86_64")
    names = zipfile.ZipFile(io.BytesIO(layer.zip)).namelist()
    assert any(n.startswith("python/joblib/") for n in names)
    assert not any(n.startswith(("python/cloudpickle", "python/cloudpickle-")) for n in names), \
        [n for n in names if "cloudpickle" in n][:5]
    assert layer.site.excluded == ["cloudpickle"]
    assert "cloudpickle" not in layer.site.resolution.resolved and "cloudpickle" not in layer.site.manifest
    assert layer.site.manifest["joblib"] == {"dist": "joblib", "version": joblib}
    assert not any("/test/" in n for n in names if n.startswith("python/joblib/"))  # its suite went
