"""Checkpoint folders whose remote code is a thin stub importing ``acestep.models.common.*``: the
``acestep`` source is found ($ACESTEP_SRC, then an ACE-Step-1.5 checkout beside the checkpoint root,
then an installed package), checked without running it, and put on sys.path for the load; with
none, one line naming the missing module and the three fixes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from engine import acesrc
from engine.models.loader import ModelLoadError, load_decoder

CPU = torch.device("cpu")
DEMO_CODE = Path(__file__).resolve().parents[2] / "engine" / "models" / "demo"
COMMON = "acestep.models.common"


def write_acestep_tree(root: Path, *, with_modeling: bool = True) -> Path:
    """A small ``acestep`` package under ``root``: the demo model's code as acestep.models.common.*."""
    common = root / "acestep" / "models" / "common"
    common.mkdir(parents=True)
    for package in (root / "acestep", root / "acestep" / "models", common):
        (package / "__init__.py").write_text("")
    shutil.copyfile(DEMO_CODE / "configuration_acestep_demo.py", common / "configuration_acestep_v15.py")
    if with_modeling:
        code = (DEMO_CODE / "acestep_demo_modeling.py").read_text(encoding="utf-8")
        assert "from .configuration_acestep_demo import" in code
        code = code.replace("from .configuration_acestep_demo import", "from .configuration_acestep_v15 import")
        (common / "modeling_acestep_v15.py").write_text(code + f"\nSOURCE_ROOT = {str(root)!r}\n")
    return root


@pytest.fixture
def stub_model(demo_paths, tmp_path):
    """<tmp>/checkpoints/acestep-v15-stub: the demo weights + config, code files replaced by stubs."""
    model = tmp_path / "checkpoints" / "acestep-v15-stub"
    shutil.copytree(demo_paths["model_dir"], model)
    (model / "configuration_acestep_demo.py").write_text(
        f"from {COMMON}.configuration_acestep_v15 import AceStepDemoConfig  # noqa: F401\n"
    )
    (model / "acestep_demo_modeling.py").write_text(
        f"from {COMMON}.modeling_acestep_v15 import AceStepConditionGenerationModel, AceStepDiTModel  # noqa: F401\n"
    )
    return model


@pytest.fixture(autouse=True)
def clean_imports(monkeypatch):
    """Each test imports ``acestep`` afresh, from the source it set up, and leaves sys.path as found."""
    monkeypatch.delenv(acesrc.ENV_VAR, raising=False)
    saved_path = list(sys.path)

    def forget() -> None:
        for name in [
            n for n in sys.modules if n.split(".")[0] == "acestep" or (n.startswith("transformers_modules") and "stub" in n)
        ]:
            del sys.modules[name]

    forget()
    yield
    forget()
    sys.path[:] = saved_path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def _source_of(model) -> str:
    """The root of the acestep tree whose code built ``model`` (the tree records it)."""
    return sys.modules[type(model).__module__].SOURCE_ROOT


def test_needed_modules_are_read_from_the_stubs(stub_model, demo_paths):
    assert acesrc.needed_modules(stub_model) == [f"{COMMON}.configuration_acestep_v15", f"{COMMON}.modeling_acestep_v15"]
    assert acesrc.needed_modules(demo_paths["model_dir"]) == []
    assert acesrc.resolve(demo_paths["model_dir"]) is None  # the demo's own code needs no acestep


def test_loads_through_acestep_src(stub_model, tmp_path, monkeypatch):
    src = write_acestep_tree(tmp_path / "elsewhere" / "src")
    write_acestep_tree(tmp_path / "ACE-Step-1.5")  # present, but the variable wins
    monkeypatch.setenv(acesrc.ENV_VAR, str(src))
    messages: list[str] = []
    loaded = load_decoder(stub_model, device=CPU, dtype=torch.float32, log=messages.append)
    assert type(loaded.decoder).__name__ == "AceStepDiTModel"
    assert _source_of(loaded.decoder) == str(src)
    assert loaded.null_condition_emb.shape == (1, 1, 128)
    assert any(f"acestep from $ACESTEP_SRC: {src}" in m for m in messages), messages
    assert sys.path[0] == str(src)


def test_loads_through_a_sibling_checkout(stub_model, tmp_path):
    checkout = write_acestep_tree(tmp_path / "ACE-Step-1.5")
    assert acesrc.resolve(stub_model) == acesrc.AceSource(str(checkout), "ACE-Step-1.5 checkout")
    loaded = load_decoder(stub_model, device=CPU, dtype=torch.float32)
    assert _source_of(loaded.decoder) == str(checkout)
    assert all(not p.requires_grad for p in loaded.decoder.parameters())


def test_fails_in_one_line_without_any_source(stub_model):
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(stub_model, device=CPU, dtype=torch.float32)
    line = _one_line(exc)
    assert f"imports {COMMON}.configuration_acestep_v15" in line
    assert "$ACESTEP_SRC" in line and str(stub_model.parent.parent / "ACE-Step-1.5") in line and "pip install" in line


def test_a_candidate_lacking_an_imported_module_is_rejected(stub_model, tmp_path, monkeypatch):
    partial = write_acestep_tree(tmp_path / "partial", with_modeling=False)
    monkeypatch.setenv(acesrc.ENV_VAR, str(partial))
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(stub_model, device=CPU, dtype=torch.float32)
    line = _one_line(exc)
    assert f"$ACESTEP_SRC {partial} lacks {COMMON}.modeling_acestep_v15" in line
    assert "acestep" not in sys.modules  # rejected without importing anything from it
    # A complete sibling checkout is used instead of the incomplete $ACESTEP_SRC.
    checkout = write_acestep_tree(tmp_path / "ACE-Step-1.5")
    assert acesrc.resolve(stub_model).root == str(checkout)


def test_an_installed_package_is_the_last_resort(stub_model, tmp_path, monkeypatch):
    site = write_acestep_tree(tmp_path / "site-packages")
    monkeypatch.syspath_prepend(str(site))
    assert acesrc.resolve(stub_model) == acesrc.AceSource(str(site), "installed package")
    assert "acestep" not in sys.modules  # found by a path search, nothing executed
    checkout = write_acestep_tree(tmp_path / "ACE-Step-1.5")
    assert acesrc.resolve(stub_model).root == str(checkout)  # a checkout beside the root comes first


def test_preprocessing_loads_the_condition_encoder_through_the_same_source(stub_model, demo_paths, tmp_path):
    from engine.audio.preprocess.encode import PreprocessModelError, load_pass2

    with pytest.raises(PreprocessModelError) as exc:
        load_pass2(demo_paths["checkpoint_dir"], str(stub_model), CPU, torch.float32)
    line = _one_line(exc)
    assert line.startswith(f"acestep-v15-stub's model code imports {COMMON}.configuration_acestep_v15"), line  # not per backend
    checkout = write_acestep_tree(tmp_path / "ACE-Step-1.5")
    models = load_pass2(demo_paths["checkpoint_dir"], str(stub_model), CPU, torch.float32)
    assert _source_of(models.encoder) == str(checkout)
    models.close()
