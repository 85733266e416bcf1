"""The one registry helper: decorator registration, duplicates refused, unknown names listed, one
package's modules discovered on the first lookup (and its private modules skipped)."""

from __future__ import annotations

import sys

import pytest

from blastscan.errors import BlastscanError
from blastscan.registry import Registry


def test_decorator_returns_the_object_and_get_finds_it():
    reg = Registry("engine")

    @reg.register("fast")
    def fast():
        return 1

    assert fast() == 1 and reg.get("fast") is fast
    assert "fast" in reg and "slow" not in reg and len(reg) == 1


def test_a_name_registered_twice_is_an_error_but_the_same_object_again_is_not():
    reg = Registry("engine")
    reg.register("a", int)
    reg.register("a", int)
    with pytest.raises(ValueError, match="engine 'a' is registered twice"):
        reg.register("a", float)
    assert reg.get("a") is int


def test_unknown_name_is_one_line_listing_the_known():
    reg = Registry("classifier")
    reg.register("svm", 1)
    reg.register("logreg", 2)
    with pytest.raises(BlastscanError, match=r"classifier 'smv'.*unknown; choose from: logreg, svm"):
        reg.get("smv")
    assert reg.names() == ["logreg", "svm"] and list(reg.items()) == [("logreg", 2), ("svm", 1)]


def test_discovery_imports_the_packages_public_modules_once(tmp_path, monkeypatch):
    pkg = tmp_path / "regpkg_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from blastscan.registry import Registry\nREG = Registry('thing', 'regpkg_demo')\n")
    (pkg / "one.py").write_text("from regpkg_demo import REG\nREG.register('one', 1)\n")
    (pkg / "two.py").write_text("from regpkg_demo import REG\nREG.register('two', 2)\n")
    (pkg / "_private.py").write_text("from regpkg_demo import REG\nREG.register('hidden', 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import regpkg_demo

    try:
        assert "regpkg_demo.one" not in sys.modules  # nothing imported before the first lookup
        assert regpkg_demo.REG.names() == ["one", "two"]
        assert regpkg_demo.REG.get("two") == 2
    finally:
        for mod in [m for m in sys.modules if m.startswith("regpkg_demo")]:
            del sys.modules[mod]


def test_named_modules_are_imported_with_the_package_and_remove_forgets_a_name(tmp_path, monkeypatch):
    pkg = tmp_path / "regpkg_kinds"
    pkg.mkdir()
    (tmp_path / "regpkg_reg.py").write_text("from blastscan.registry import Registry\n"
                                             "REG = Registry('thing', 'regpkg_kinds', modules=['regpkg_extra'])\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("from regpkg_reg import REG\nREG.register('one', 1)\n")
    (tmp_path / "regpkg_extra.py").write_text("from regpkg_reg import REG\nREG.register('extra', 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import regpkg_reg

    try:
        assert "regpkg_extra" not in sys.modules
        assert regpkg_reg.REG.names() == ["extra", "one"]
        regpkg_reg.REG.remove("extra")
        regpkg_reg.REG.remove("never_there")
        assert regpkg_reg.REG.names() == ["one"]
        regpkg_reg.REG.register("extra", 3)  # a removed name can be registered again, with another entry
        assert regpkg_reg.REG.get("extra") == 3
    finally:
        for mod in [m for m in sys.modules if m.startswith("regpkg_")]:
            del sys.modules[mod]


def test_restored_forgets_what_was_registered_inside_the_block():
    reg = Registry("engine")
    reg.register("kept", 1)
    with reg.restored():
        reg.register("temporary", 2)
        assert reg.names() == ["kept", "temporary"]
    assert reg.names() == ["kept"]
    with pytest.raises(RuntimeError), reg.restored():
        reg.register("lost", 3)
        raise RuntimeError
    assert reg.names() == ["kept"]
