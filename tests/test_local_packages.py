"""The user's own packages (folders with __init__.py next to the notebook, not installed)
travel by value with the function, subpackages and relative imports included; the
workers cannot import them from disk."""
import sys
import textwrap

import pytest


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A package ``geometry`` with a subpackage and relative imports, importable here only."""
    root = tmp_path / "project"
    pkg = root / "geometry"
    (pkg / "shapes").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .units import SCALE\n")
    (pkg / "units.py").write_text("SCALE = 10\n")
    (pkg / "shapes" / "__init__.py").write_text("")
    (pkg / "shapes" / "square.py").write_text(textwrap.dedent("""
        import os
        import sys

        from .. import units
        from ..units import SCALE


        class Square:
            def __init__(self, side):
                self.side = side

            def area(self):
                return self.side * self.side * units.SCALE


        def area_of(side):
            here = [p for p in sys.path if 'project' in p]
            loaded_from_disk = any(getattr(m, '__file__', None) and 'project' in m.__file__
                                   for m in list(sys.modules.values()))
            return Square(side).area(), SCALE, here, loaded_from_disk, os.getpid()
    """))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == "geometry" or m.startswith("geometry.")]:
        del sys.modules[name]


def test_package_travels_by_value(ex, project):
    from geometry.shapes.square import Square, area_of

    results = ex.map(area_of, [1, 2, 3]).result(timeout=60)
    assert [r[:4] for r in results] == [(10, 10, [], False), (40, 10, [], False),
                                        (90, 10, [], False)]
    # Instances of the package's classes travel both ways too.
    assert ex.map(lambda s: Square(s.side + 1), [Square(4)]).result(timeout=60)[0].area() == 250


def test_package_edits_are_seen_by_the_next_job(ex, project):
    import importlib

    import geometry.units
    from geometry.shapes import square

    assert ex.map(square.area_of, [2]).result(timeout=60)[0][0] == 40
    (project / "geometry" / "units.py").write_text("SCALE = 100\n")
    importlib.reload(geometry.units)
    assert ex.map(square.area_of, [2]).result(timeout=60)[0][0] == 400
