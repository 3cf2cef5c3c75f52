"""The stdlib-only contract modules never pull in the training stack, the UI toolkit or a torch-side
sub-package of ``engine`` (checked in a fresh interpreter, where ``sys.modules`` shows everything an
import really loaded). The lists are import-linter's, read from ``pyproject.toml``: ``lint-imports``
checks every import statement, these tests what an import really does at run time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .import_contract import CONTRACT_MODULES, CONTRACTS, ENGINE_SUBPACKAGES, HEAVY, REPO, UI_PACKAGES

pytestmark = pytest.mark.integration  # each check starts a fresh interpreter

# pynvml is light (the GPU list), but a contract module loads it only when asked for the GPUs.
FORBIDDEN = (*HEAVY, *UI_PACKAGES, "pynvml")

_PROBE = """
import json, sys
for name in {modules!r}:
    __import__(name)
{after}
loaded = set(sys.modules)
print(json.dumps(sorted(m for m in loaded if m.split('.')[0] in {forbidden!r} or m.startswith({subpackages!r}))))
"""


def loaded_after(modules: tuple[str, ...], after: str = "") -> list[str]:
    """The forbidden packages and engine sub-packages (any of their modules) loaded by importing ``modules``."""
    subpackages = tuple(f"{p}." for p in ENGINE_SUBPACKAGES) + ENGINE_SUBPACKAGES
    code = _PROBE.format(modules=modules, forbidden=FORBIDDEN, subpackages=subpackages, after=after)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_contract_lists_every_top_level_module_and_sub_package() -> None:
    """A new ``engine/x.py`` is a contract module (listed, so import-linter checks it); a new
    ``engine/x/`` is torch side (forbidden to the UI). Neither can be added without the contract."""
    engine = REPO / "engine"
    modules = {f"engine.{p.stem}" for p in engine.glob("*.py") if p.stem != "__init__"}
    packages = {f"engine.{p.parent.name}" for p in engine.glob("*/__init__.py")}
    assert set(CONTRACT_MODULES) == modules
    assert set(ENGINE_SUBPACKAGES) == packages


def test_the_contract_modules_are_forbidden_what_the_ui_is() -> None:
    """pyproject's "contract-stdlib" forbids exactly the heavy list of "ui-light" plus the sub-packages."""
    assert sorted(CONTRACTS["contract-stdlib"]["forbidden_modules"]) == sorted((*HEAVY, *ENGINE_SUBPACKAGES))


def test_contract_modules_import_nothing_heavy() -> None:
    assert [m for m in loaded_after(CONTRACT_MODULES) if not m.startswith("engine.")] == []


@pytest.mark.parametrize("module", CONTRACT_MODULES)
def test_each_module_alone(module: str) -> None:
    assert loaded_after((module,)) == []


def test_using_the_modules_stays_light(tmp_path) -> None:
    """Listing presets, scanning a (missing) checkpoint root, runs and a dataset loads nothing heavy
    either; gpus() may load pynvml (light by design) but nothing else."""
    after = f"""
import engine.presets as p, engine.discovery as d, engine.runs as r, engine.ptinspect as t, engine.layout as l, engine.sidecars as s
p.list_presets(); p.load_preset('recommended')
d.scan_checkpoints({str(tmp_path)!r}); r.scan_runs({str(tmp_path)!r}); t.scan_dataset({str(tmp_path)!r})
l.newest_checkpoint({str(tmp_path)!r}); s.find_audio_files({str(tmp_path)!r}); d.find_model({str(tmp_path)!r}, 'turbo')
d.gpus()
"""
    loaded = loaded_after(CONTRACT_MODULES, after)
    assert [m for m in loaded if m != "pynvml" and not m.startswith("engine.")] == []
