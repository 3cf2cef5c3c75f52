"""Issue 12's smaller items: where TensorBoard writes, the missing model code message, CPU out-of-memory
advice. Each drives the real command line or the real function on the demo model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.cli.main import main
from tests.reliability.conftest import demo_argv


def test_log_dir_from_a_config_file_stays_inside_the_run_folder(demo_paths, tmp_path, capsys) -> None:
    outside = tmp_path / "elsewhere"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"log_dir": str(outside)}))
    run = tmp_path / "run"
    assert main([*demo_argv(demo_paths, run), "--config", str(cfg)]) == 0
    text = "".join(capsys.readouterr())
    assert not outside.exists(), "a log_dir read from a file wrote outside -o"
    assert list((run / "runs").glob("events.out.tfevents*"))
    assert f"TensorBoard logs: {run / 'runs'}" in text
    assert "outside the output folder" in text and "--log-dir" in text


def test_log_dir_typed_on_the_command_line_is_obeyed_and_named(demo_paths, tmp_path, capsys) -> None:
    chosen = tmp_path / "chosen"
    run = tmp_path / "run"
    assert main([*demo_argv(demo_paths, run), "--log-dir", str(chosen)]) == 0
    assert list(chosen.glob("events.out.tfevents*"))
    assert f"TensorBoard logs: {chosen}" in "".join(capsys.readouterr())


def test_a_missing_model_code_file_is_named_once_without_a_hub_url(demo_paths, tmp_path, capsys) -> None:
    root = tmp_path / "checkpoints"
    # Its own folder name: transformers caches remote code per folder name, shared across processes.
    model = root / "no-code-base"
    shutil.copytree(Path(demo_paths["checkpoint_dir"]) / demo_paths["model_variant"], model)
    (model / "acestep_demo_modeling.py").unlink()
    argv = demo_argv(demo_paths, tmp_path / "run", "--checkpoint-dir", str(root), "--model-variant", model.name)
    assert main(argv) != 0
    text = "".join(capsys.readouterr())
    assert "Traceback" not in text and "://" not in text, text  # no (invented) hub URL
    lines = [line for line in text.splitlines() if "acestep_demo_modeling.py" in line]
    assert len(lines) == 1, text
    assert "is missing" in lines[0] and "re-download the model folder" in lines[0]


def test_cpu_out_of_memory_gets_the_same_advice_as_gpu_out_of_memory() -> None:
    import torch

    from engine.train.trainer import failure_event

    try:  # a real refusal from torch's CPU allocator (2**62 bytes), not a made-up message
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        cpu = failure_event(exc, step=3)
    assert "can't allocate memory" in cpu.message
    gpu = failure_event(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), step=3)
    assert gpu.oom and gpu.hint and "--batch-size" in gpu.hint
    assert cpu.oom and cpu.hint == gpu.hint
    other = failure_event(RuntimeError("The expanded size of the tensor (3) must match"))
    assert not other.oom and not other.hint
