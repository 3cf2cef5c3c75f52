"""The stdlib-only contract modules never pull in the training stack or the UI toolkit (checked in a
fresh interpreter, where ``sys.modules`` shows everything an import really loaded)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The contract is every module at the top of engine/; the sub-packages hold the torch side.
CONTRACT = tuple(sorted(f"engine.{p.stem}" for p in (REPO / "engine").glob("*.py") if p.stem != "__init__"))
# What the UI may import besides the contract: the engine process's spawn target and the CLI dispatch.
UI_ALLOWED_EXTRA = ("engine.process.entry", "engine.cli")
FORBIDDEN = ("torch", "numpy", "transformers", "lightning", "pytorch_lightning", "peft", "lycoris", "diffusers",
             "bitsandbytes", "safetensors", "textual", "pynvml")

_PROBE = """
import json, sys
for name in {modules!r}:
    __import__(name)
{after}
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})))
"""


def loaded_after(modules: tuple[str, ...], after: str = "") -> list[str]:
    code = _PROBE.format(modules=modules, forbidden=FORBIDDEN, after=after)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_contract_modules_import_nothing_heavy() -> None:
    assert loaded_after(CONTRACT) == []


@pytest.mark.parametrize("module", CONTRACT)
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
    assert [m for m in loaded_after(CONTRACT, after) if m != "pynvml"] == []


def engine_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``engine.*`` import in a file, at any depth (lazy imports count)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "engine"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "engine":
            if node.module == "engine":  # from engine import protocol, layout
                found += [(node.lineno, f"engine.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def test_the_contract_imports_no_engine_sub_package() -> None:
    """The layers, by name: a top-level engine module imports only other top-level modules (even
    lazily), so the contract never reaches the torch side."""
    wrong = [
        f"{path.name}:{line}: {module}"
        for path in sorted((REPO / "engine").glob("*.py"))
        for line, module in engine_imports(path)
        if module not in CONTRACT
    ]
    assert wrong == []


def test_the_ui_imports_only_the_contract() -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in sorted((REPO / "sidestep_tui").rglob("*.py"))
        for line, module in engine_imports(path)
        if module not in CONTRACT and not module.startswith(UI_ALLOWED_EXTRA)
    ]
    assert wrong == []
