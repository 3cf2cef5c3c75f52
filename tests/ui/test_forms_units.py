"""Unit tests of the pure parts behind the forms: formatting, the form model and path completion.
No Textual app is started here."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from engine import config as cfg
from engine.discovery import GpuInfo, ModelInfo
from engine.ptinspect import DatasetReport, TensorFormat
from sidestep_tui import formatting as fmt
from sidestep_tui import forms
from sidestep_tui.widgets.path_input import check_directory, complete_path

# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    "value,text",
    [
        (None, "n/a"),
        (-1, "n/a"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KB"),
        (4566 * 2**20, "4.5 GB"),
        (250 * 2**30, "250 GB"),
    ],
)
def test_human_size(value, text) -> None:
    assert fmt.human_size(value) == text


@pytest.mark.parametrize(
    "seconds,text",
    [
        (None, "n/a"),
        (float("nan"), "n/a"),
        (-3, "n/a"),
        (0, "0 s"),
        (42.4, "42 s"),
        (245, "4 m 05 s"),
        (7980, "2 h 13 m"),
        (3 * 86400 + 4 * 3600, "3 d 04 h"),
    ],
)
def test_human_duration(seconds, text) -> None:
    assert fmt.human_duration(seconds) == text


def test_number_and_plural() -> None:
    assert fmt.number(None) == "n/a"
    assert fmt.number(2048) == "2,048"
    assert fmt.number(1.0) == "1.0"
    assert fmt.number(-0.4) == "-0.4"
    assert fmt.number(0.000312345) == "0.000312"
    assert fmt.plural(1, "sample") == "1 sample" and fmt.plural(2, "sample") == "2 samples"


@pytest.mark.parametrize(
    "args,kwargs,text",
    [
        (("turbo",), {}, "turbo"),
        (("sft",), {"xl": True}, "XL sft"),
        (("base",), {"official": False}, "fine-tune of base"),
        ((None,), {"official": False, "base": "turbo"}, "fine-tune of turbo"),
        ((None,), {"official": False}, "fine-tune (base unknown)"),
    ],
)
def test_variant_badge(args, kwargs, text) -> None:
    assert fmt.variant_badge(*args, **kwargs) == text


def _model(**changes) -> ModelInfo:
    base = dict(
        name="acestep-v15-turbo",
        path="/c/acestep-v15-turbo",
        official=True,
        variant="turbo",
        xl=False,
        alias="turbo",
        size_bytes=4 * 2**30,
        weights_bytes=4 * 2**30,
        num_hidden_layers=24,
        hidden_size=2048,
        timestep_mu=-0.4,
        timestep_sigma=1.0,
        is_turbo=True,
    )
    return ModelInfo(**{**base, **changes})


def test_model_rows_filter_and_detail() -> None:
    turbo = _model()
    broken = _model(name="mine", official=False, variant="unknown", alias="mine", problems=("no weights (model.safetensors)",))
    assert fmt.model_row(turbo) == ("acestep-v15-turbo", "turbo", "official", "4.0 GB", "24", "2,048", "-0.4 / 1.0", "✓ ok")
    assert fmt.model_row(broken)[1:3] == ("fine-tune (base unknown)", "custom")
    assert fmt.model_row(broken)[-1] == "✗ 1 problem"
    assert fmt.model_matches(turbo, "TURBO official") and not fmt.model_matches(turbo, "custom")
    assert fmt.model_matches(broken, "weights") and fmt.model_matches(broken, "")
    assert "✗ no weights" in fmt.model_detail(broken)
    assert "--model turbo" in fmt.model_detail(turbo)


def test_gpu_lines_never_invent_a_gpu() -> None:
    assert fmt.gpu_lines([]) == ["no GPU found (NVML reports none; training would run on the CPU)"]
    assert fmt.gpu_lines([GpuInfo(1, "NVIDIA H200", 2048.0, 143771.0)]) == ["GPU 1  NVIDIA H200  138 GB free of 140 GB"]


def test_dataset_summary_and_problems() -> None:
    report = DatasetReport(
        "d",
        15,
        75.0,
        8.0,
        tuple(f"s{i}.pt" for i in range(16)),
        (("s3.pt", "not a torch.save zip archive"),),
        "acestep-v15-turbo",
        2048,
        True,
    )
    summary = fmt.dataset_summary(report, "base", 2048)
    assert "15 usable of 16 files (1 with problems)" in summary
    assert "1 m 15 s" in summary and "8 s" in summary
    assert "✗ 1 file failed the checks" in summary
    problems = fmt.dataset_problems(report, "base", 2048)
    assert problems[0] == "✗ s3.pt: not a torch.save zip archive"
    assert problems[1].startswith("! stale: preprocessed for acestep-v15-turbo, but the chosen model is base")
    assert fmt.dataset_problems(report, "turbo", 2048) == problems[:1]  # alias and folder name agree
    assert "width 2048 differs" in fmt.dataset_problems(report, "turbo", 128)[-1]
    old = dataclasses.replace(report, problems=(), tensor_format=TensorFormat(1, "legacy", recorded=True))
    assert "format          legacy conditioning (format 1, before formats were recorded)" in fmt.dataset_summary(old)
    (line,) = fmt.dataset_problems(old, "turbo", 2048)
    assert line.startswith("! legacy conditioning (format 1") and "--conditioning inference" in line
    current = dataclasses.replace(old, tensor_format=TensorFormat(2, "inference", recorded=True))
    assert "format          inference conditioning (format 2)" in fmt.dataset_summary(current)
    assert fmt.dataset_problems(current, "turbo", 2048) == []
    unknown = dataclasses.replace(old, tensor_format=TensorFormat(1, "legacy", recorded=False))  # the demo: no meta
    assert "legacy conditioning assumed" in fmt.dataset_summary(unknown) and fmt.dataset_problems(unknown, "turbo", 2048) == []
    empty = DatasetReport("d", 0, 0.0, 0.0, (), ((".", "no sample .pt files"),), None)
    assert "n/a" in fmt.dataset_summary(empty)
    assert fmt.dataset_problems(empty) == ["✗ no sample .pt files"]


# --------------------------------------------------------------------------- form model


def test_specs_cover_the_schema_in_order() -> None:
    assert [s.name for s in forms.SPECS] == [f.name for f in dataclasses.fields(cfg.TrainConfig)]
    grouped = forms.grouped()
    assert [g for g, _ in grouped] == [g for g in cfg.GROUPS if any(s.group == g for s in forms.SPECS)]
    assert sum(len(specs) for _, specs in grouped) == len(forms.SPECS)
    kinds = {s.name: s.kind for s in forms.SPECS}
    assert kinds["rank"] == "int" and kinds["learning_rate"] == "float" and kinds["use_dora"] == "bool"
    assert kinds["adapter_type"] == "choice" and kinds["target_modules"] == "multi" and kinds["dataset_dir"] == "path"
    assert forms.SPEC_BY_NAME["rank"].range_text == "1 – 1024"


def test_visibility_rules() -> None:
    rank, dim, workers = (forms.SPEC_BY_NAME[n] for n in ("rank", "lokr_linear_dim", "num_workers"))
    assert forms.field_visible(rank, depth="basic", adapter_type="lora")
    assert not forms.field_visible(rank, depth="advanced", adapter_type="lokr")
    assert forms.field_visible(dim, depth="basic", adapter_type="lokr")
    assert not forms.field_visible(workers, depth="basic", adapter_type="lora")
    assert forms.field_visible(workers, depth="advanced", adapter_type="lora")
    assert forms.field_visible(dim, depth="basic", adapter_type="lora", has_error=True)


def test_raw_values_round_trip_through_the_parser() -> None:
    raw = forms.merge_raw(forms.default_raw(), {"checkpoint_dir": "/c", "dataset_dir": "/d", "output_dir": "/o"})
    assert (
        raw["rank"] == "64" and raw["learning_rate"] == "" and raw["target_modules"] == ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    config, errors = forms.parse_raw(raw)
    assert errors == {} and config == cfg.parse({"checkpoint_dir": "/c", "dataset_dir": "/d", "output_dir": "/o"})
    values = forms.config_values(config)
    assert values["rank"] == 64
    assert forms.merge_raw(raw, values) == raw


def test_bad_raw_values_give_per_field_errors_and_no_config() -> None:
    raw = forms.merge_raw(forms.default_raw(), {"rank": "0", "learning_rate": "abc", "bogus": 1})
    config, errors = forms.parse_raw(raw)
    assert config is None
    assert errors["rank"].startswith("must be >= 1")
    assert "expected a number" in errors["learning_rate"]
    assert errors["bogus"].startswith("unknown setting")
    assert errors["dataset_dir"] == "is required"


def test_placeholders_follow_the_variant_and_model_config() -> None:
    turbo = forms.placeholders({"model_variant": "turbo"})
    assert turbo["shift"] == "auto: 3.0 for turbo" and turbo["num_inference_steps"] == "auto: 8 for turbo"
    assert turbo["timestep_mu"] == "auto: -0.4 (default)"
    base = forms.placeholders({"model_variant": "my-finetune", "base_model": "sft"}, {"timestep_mu": -0.3, "timestep_sigma": 0.9})
    assert base["shift"] == "auto: 1.0 for sft"
    assert base["timestep_mu"] == "auto: -0.3 (model config)" and base["timestep_sigma"] == "auto: 0.9 (model config)"
    assert forms.placeholders({"optimizer_type": "prodigy"})["learning_rate"] == "auto: 1.0 (prodigy)"
    assert forms.placeholders({})["chunk_duration"] == "empty = whole clips"
    assert forms.placeholders({})["dataset_dir"] == "required"
    # every optional field says what empty means
    assert {s.name for s in forms.SPECS if s.optional} <= set(forms.placeholders({}))


@pytest.mark.parametrize(
    "samples,values,expected",
    [
        (16, dict(batch_size=2, gradient_accumulation=3, dataset_repeats=1, epochs=5, max_steps=0), (6, 8, 3, 15, False)),
        (16, dict(batch_size=1, gradient_accumulation=4, dataset_repeats=2, epochs=10, max_steps=20), (4, 32, 8, 20, True)),
        (10, dict(batch_size=4, gradient_accumulation=1, dataset_repeats=1, epochs=3, max_steps=0), (4, 3, 3, 9, False)),
        (
            None,
            dict(batch_size=1, gradient_accumulation=4, dataset_repeats=1, epochs=3, max_steps=0),
            (4, None, None, None, False),
        ),
        (None, dict(batch_size=1, gradient_accumulation=4, dataset_repeats=1, epochs=3, max_steps=50), (4, None, None, 50, True)),
        (
            16,
            dict(batch_size="x", gradient_accumulation=4, dataset_repeats=1, epochs=3, max_steps=0),
            (None, None, None, None, False),
        ),
    ],
)
def test_steps_preview(samples, values, expected) -> None:
    p = forms.steps_preview({k: str(v) for k, v in values.items()}, samples)
    assert (p.effective_batch, p.micro_batches_per_epoch, p.steps_per_epoch, p.total_steps, p.capped_by_max_steps) == expected


def test_command_line_reproduces_the_config() -> None:
    config = cfg.parse({"checkpoint_dir": "/c k", "dataset_dir": "/d", "output_dir": "/o", "rank": 8, "use_dora": True})
    line = forms.command_line(config)
    assert line.startswith("sidestep train ")
    assert "'/c k'" in line and "--rank 8" in line and "--use-dora" in line


# --------------------------------------------------------------------------- path completion


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("acestep-v15-base", "acestep-v15-turbo", "data", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "acestep-notes.txt").write_text("x")
    return tmp_path


def test_complete_path(tree: Path) -> None:
    sep = os.sep
    done = complete_path(str(tree / "acest"))
    assert done.suggestion == str(tree / "acestep-v15-")  # the common prefix of the two folders
    assert done.candidates == ("acestep-v15-base" + sep, "acestep-v15-turbo" + sep)
    assert complete_path(str(tree / "acestep-v15-t")).suggestion == str(tree / "acestep-v15-turbo") + sep
    assert complete_path(str(tree / "d")).suggestion == str(tree / "data") + sep
    assert complete_path(str(tree / "acestep-n")).suggestion is None  # files only with dirs_only=False
    assert complete_path(str(tree / "acestep-n"), dirs_only=False).suggestion == str(tree / "acestep-notes.txt")
    listing = complete_path(str(tree) + sep)
    assert ".hidden" + sep not in listing.candidates and "data" + sep in listing.candidates
    assert complete_path(str(tree / ".h")).suggestion == str(tree / ".hidden") + sep
    assert complete_path(str(tree / "missing" / "x")) == complete_path("")  # nothing, no error


def test_complete_path_keeps_the_tilde(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree))
    assert complete_path("~/da").suggestion == "~/data" + os.sep


def test_check_directory(tree: Path) -> None:
    assert check_directory("").ok is False
    assert check_directory(str(tree / "nope")).message == "no such folder"
    assert check_directory(str(tree / "acestep-notes.txt")).message == "not a folder"
    assert check_directory(str(tree)).ok is True


def test_each_lycoris_adapter_shows_its_own_section_and_the_shared_one() -> None:
    loha, oft, bypass, lokr = (forms.SPEC_BY_NAME[n] for n in ("loha_linear_dim", "oft_dim", "lycoris_bypass", "lokr_linear_dim"))
    assert forms.field_visible(loha, depth="basic", adapter_type="loha")
    assert not forms.field_visible(loha, depth="advanced", adapter_type="oft")
    assert forms.field_visible(oft, depth="basic", adapter_type="oft")
    assert not forms.field_visible(oft, depth="advanced", adapter_type="lokr")
    assert not forms.field_visible(lokr, depth="advanced", adapter_type="loha")
    for kind in ("lokr", "loha", "oft"):
        assert forms.field_visible(bypass, depth="advanced", adapter_type=kind)
    assert not forms.field_visible(bypass, depth="advanced", adapter_type="lora")
    assert forms.SPEC_BY_NAME["adapter_type"].choices == ("lora", "lokr", "loha", "oft")
