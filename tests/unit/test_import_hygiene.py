"""The stdlib-only contract modules never pull in the training stack or the UI toolkit (checked in a
fresh interpreter, where ``sys.modules`` shows everything an import really loaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # each check starts a fresh interpreter

CONTRACT = ("engine.protocol", "engine.config", "engine.presets", "engine.discovery", "engine.runs", "engine.ptinspect", "engine.summary",
            "engine.tailer")
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
import engine.presets as p, engine.discovery as d, engine.runs as r, engine.ptinspect as t
p.list_presets(); p.load_preset('recommended')
d.scan_checkpoints({str(tmp_path)!r}); r.scan_runs({str(tmp_path)!r}); t.scan_dataset({str(tmp_path)!r})
d.gpus()
"""
    assert [m for m in loaded_after(CONTRACT, after) if m != "pynvml"] == []
