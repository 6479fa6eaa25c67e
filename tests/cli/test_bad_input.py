"""Bad command-line input exits 2 with one line naming the file, the key and the fix.

Every case fails before any training: flags are applied or refused, never silently dropped.
"""

from pathlib import Path

import pytest
import torch

from lightning_accel import ClassificationModule
from lightning_accel.cli.fit_job import MAIN_JOB_FLAGS
from lightning_accel.cli.main import main

RECIPES = Path(__file__).parents[2] / "recipes"
CLEAN = RECIPES / "small_cnn.yaml"


def _error_line(capsys) -> str:
    """The one line on stderr, checked to be the CLI's error and not a traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lightning-accel: error: "), err
    return lines[0]


def _recipe(tmp_path: Path, old: str, new: str) -> Path:
    text = CLEAN.read_text()
    assert old in text
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.bad_input("cli")
def test_a_binary_recipe_names_the_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"model:\n  \xff\xfe\x00\x81 binary")
    assert main(["fit", "--recipe", str(path)]) == 2
    line = _error_line(capsys)
    assert f"{path} is not a UTF-8 text file (byte 0xff at offset 9)" in line
    assert "pass the YAML file itself" in line


@pytest.mark.bad_input("recipe")
def test_a_seed_that_is_not_a_number_names_the_key(tmp_path: Path, capsys) -> None:
    path = _recipe(tmp_path, "seed_everything: 0", "seed_everything: abc")
    assert main(["fit", "--recipe", str(path)]) == 2
    line = _error_line(capsys)
    assert f"{path}: seed_everything must be an integer; got 'abc'" in line
    assert "e.g. seed_everything: 0" in line


@pytest.mark.bad_input("recipe")
def test_init_args_as_a_list_names_the_key(tmp_path: Path, capsys) -> None:
    old = "  init_args:\n    model: small_cnn\n    lr: 0.05\n    cosine_epochs: 6\n"
    path = _recipe(tmp_path, old, "  init_args: [small_cnn, 0.05]\n")
    assert main(["fit", "--recipe", str(path)]) == 2
    line = _error_line(capsys)
    assert f"{path}: model.init_args must be a mapping of argument: value" in line
    assert "got ['small_cnn', 0.05]" in line and "e.g. init_args: {lr: 0.1}" in line


@pytest.mark.bad_input("cli")
def test_an_override_that_is_not_yaml_names_the_key(capsys) -> None:
    assert main(["fit", "--recipe", str(CLEAN), "--set", "trainer.max_epochs=[1"]) == 2
    line = _error_line(capsys)
    assert f"{CLEAN}: trainer.max_epochs has a value that is not YAML: '[1'" in line
    assert "close brackets and quotes" in line


@pytest.mark.bad_input("file system")
def test_export_to_an_existing_file_is_refused_before_loading(tmp_path: Path, capsys) -> None:
    module = ClassificationModule("small_cnn", input_size=8)
    checkpoint = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": "2.6.0",
        },
        checkpoint,
    )
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    assert main(["export", str(checkpoint), "--output-dir", str(taken)]) == 2
    line = _error_line(capsys)
    assert f"--output-dir {taken} is an existing file, not a folder" in line
    assert "Pass a folder path" in line
    assert taken.read_text() == "keep me"
    assert main(["export", str(checkpoint), "--output-dir", str(taken / "sub")]) == 2
    assert f"is inside the file {taken}" in _error_line(capsys)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{values: 0.3}", "target_sparsity.values must be a non-empty list, e.g. values: [0.3"),
        ("{values: []}", "target_sparsity.values must be a non-empty list"),
        ("{min: 0.3}", "target_sparsity needs both min and max"),
        ("{min: low, max: 0.9}", "target_sparsity.min must be a number; got 'low'"),
        ("{min: 0.9, max: 0.3}", "min must not exceed max; got min=0.9, max=0.3"),
        ("{min: 0.1, max: 0.9, distribution: gaussian}", "target_sparsity.distribution must be"),
        ("{min: 0, max: 0.9, distribution: log_uniform_values}", "needs min > 0; got min=0"),
    ],
    ids=["scalar-values", "empty-values", "min-only", "text-bound", "reversed", "unknown", "log0"],
)
@pytest.mark.bad_input("recipe")
def test_bad_sweep_values_name_the_key(tmp_path: Path, capsys, spec, message) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "method: random\nmetric: {name: sweep/objective, goal: maximize}\n"
        f"parameters:\n  callbacks.pruning.target_sparsity: {spec}\n"
        f"command: [lightning-accel, fit, --recipe, {CLEAN}]\n"
    )
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--local", "--count", "1", "--output-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert f"{path}: parameters.callbacks.pruning" in line and message in line
    assert not out.exists()


def _sweep_file(tmp_path: Path, command_tail: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "method: grid\nmetric: {name: sweep/objective, goal: maximize}\n"
        "parameters:\n  model.lr: {values: [0.1]}\n"
        f"command: [lightning-accel, fit, --recipe, {CLEAN}{command_tail}]\n"
    )
    return path


@pytest.mark.bad_input("cli")
def test_a_sweep_command_with_a_main_job_flag_no_key_stands_for_is_refused(tmp_path, capsys):
    assert main(["sweep", str(_sweep_file(tmp_path, ", --dense-epochs, '2'")), "--local"]) == 2
    line = _error_line(capsys)
    assert "--dense-epochs 2 applies to the main job's phases" in line
    assert "--set callbacks.pruning.start_epoch=N" in line


@pytest.mark.parametrize(
    ("command_tail", "extra"),
    [
        (", --set, callbacks.pruning.no_such_argument=3", []),
        (", --set, 'callbacks.pruning.target_sparsity=1.5'", []),
        ("", ["--set", "callbacks.nothing.x=1"]),
        ("", ["--set", "trainer.max_epochs=zero"]),
    ],
    ids=["command-unknown-key", "command-bad-value", "sweep-set-unknown", "sweep-set-bad"],
)
@pytest.mark.bad_input("recipe")
def test_set_in_a_sweep_command_or_on_sweep_is_checked_first(tmp_path, capsys, command_tail, extra):
    out = tmp_path / "out"
    path = _sweep_file(tmp_path, command_tail)
    assert main(["sweep", str(path), "--local", "--output-dir", str(out), *extra]) == 2
    line = _error_line(capsys)
    assert f"{path}:" in line
    assert not out.exists()


def test_sweep_set_reaches_every_trial_command(tmp_path) -> None:
    from lightning_accel.sweeps.config import SweepConfig
    from lightning_accel.sweeps.runner import trial_command

    sweep = SweepConfig.from_yaml(
        _sweep_file(tmp_path, ", --target-sparsity, '0.3'"), ["trainer.max_epochs=3"]
    )
    command = trial_command(sweep, {"model.lr": 0.1}, tmp_path, quick=True)
    assert command[-3:] == ["--set", "trainer.max_epochs=3", "model.lr=0.1"]
    assert "--target-sparsity" in command  # the trial's fit applies it as the recipe key
    assert sweep.command_overrides() == [
        "callbacks.pruning.target_sparsity=0.3",
        "trainer.max_epochs=3",
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--prune-epochs", "1"],
            "prune_epochs must be an integer >= 2 (pruning, then fine-tuning); got 1",
        ),
        (["--prune-epochs", "0"], "prune_epochs must be an integer >= 2"),
        (
            ["--dense-epochs", "0"],
            "dense_epochs must be an integer >= 1; got 0. Example: --dense-epochs 3",
        ),
        (
            ["--target-sparsity", "1.5"],
            "target_sparsity must be in [0, 1); got 1.5. Example: --target-sparsity 0.5",
        ),
        (
            ["--train-size", "-5"],
            "train_size must be an integer >= 1, or None for all (--train-size 0); got -5",
        ),
        (["--model", "resnet9000"], "model must be one of ['efficientnet_b0', "),
        (["--threads", "0"], "--threads must be >= 1; got 0"),
        (
            ["--qat-epochs", "-1"],
            "qat_epochs must be an integer >= 0 (0: no int8 row); got -1. Example: --qat-epochs 1",
        ),
    ],
    ids=["prune-1", "prune-0", "dense-0", "sparsity", "train-size", "model", "threads", "qat"],
)
@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
@pytest.mark.bad_input("cli")
def test_main_job_values_are_checked_before_training(capsys, monkeypatch, flags, message, quick):
    def no_training(cfg):
        raise AssertionError(f"training started with {cfg}")

    monkeypatch.setattr("lightning_accel.cli.fit_job.run_pruning_job", no_training)
    assert main(["fit", *(["--quick"] if quick else []), *flags]) == 2
    assert message in _error_line(capsys)


def test_main_job_flags_apply_on_top_of_quick(monkeypatch, capsys) -> None:
    seen = []

    def record(cfg):
        seen.append(cfg)
        raise ValueError("stopped before training")

    monkeypatch.setattr("lightning_accel.cli.fit_job.run_pruning_job", record)
    flags = ["--prune-epochs", "3", "--dense-epochs", "2", "--target-sparsity", "0.3"]
    assert main(["fit", "--quick", *flags, "--train-size", "0", "--mode", "unstructured"]) == 2
    (cfg,) = seen
    assert (cfg.prune_epochs, cfg.dense_epochs, cfg.target_sparsity) == (3, 2, 0.3)
    assert cfg.train_size is None and cfg.mode == "unstructured"
    assert cfg.test_size == 1000 and cfg.latency_runs == 20  # the rest stays quick
    assert main(["fit", "--quick"]) == 2
    assert (seen[1].prune_epochs, seen[1].train_size, seen[1].model) == (2, 2048, "resnet18")
    assert main(["fit", "--model", "small_cnn"]) == 2
    assert (seen[2].model, seen[2].prune_epochs, seen[2].train_size) == ("small_cnn", 4, 12_000)
    assert main(["fit", "--quick", "--train-size", "500"]) == 2  # trains on 500, not 2,048
    assert (seen[3].train_size, seen[3].prune_epochs) == (500, 2)


@pytest.mark.parametrize(
    ("flags", "override"),
    [
        (["--target-sparsity", "0.3"], "callbacks.pruning.target_sparsity=0.3"),
        (["--mode", "structured"], "callbacks.pruning.mode=structured"),
        (["--train-size", "500"], "data.train_size=500"),
        (["--train-size", "0"], "data.train_size=null"),
        (["--model", "resnet18"], "model.model=resnet18"),
    ],
)
def test_main_job_flags_with_a_recipe_become_its_keys(monkeypatch, flags, override) -> None:
    seen = {}

    def record(path, overrides, **kwargs):
        seen.update(path=path, overrides=overrides)
        return {}

    monkeypatch.setattr("lightning_accel.recipes.run.run_recipe", record)
    assert main(["fit", "--recipe", str(CLEAN), *flags, "--quick"]) == 0
    assert seen["overrides"] == [override]


def test_a_flag_applied_to_a_recipe_reaches_the_callback(monkeypatch) -> None:
    from lightning_accel.recipes.recipe import Recipe

    seen = {}
    monkeypatch.setattr(
        "lightning_accel.recipes.run.run_recipe",
        lambda path, overrides, **kwargs: seen.update(overrides=overrides) or {},
    )
    assert main(["fit", "--recipe", "small_cnn", "--target-sparsity", "0.3"]) == 0
    recipe = Recipe.from_yaml(CLEAN, seen["overrides"])
    assert recipe.callback_config("pruning")["target_sparsity"] == 0.3  # not the recipe's 0.8
    assert recipe.callbacks()[0].target_sparsity == 0.3


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--dense-epochs", "2"), ("--prune-epochs", "2"), ("--qat-epochs", "2"),
     ("--backend", "openvino")],
)  # fmt: skip
@pytest.mark.bad_input("cli")
def test_main_job_flags_no_recipe_key_stands_for_are_refused(capsys, flag, value) -> None:
    assert main(["fit", "--recipe", str(CLEAN), flag, value]) == 2
    line = _error_line(capsys)
    assert f"{flag} {value} applies to the main job's phases and has no one recipe key" in line
    assert f"set the keys instead: {MAIN_JOB_FLAGS[flag][1]}" in line


@pytest.mark.bad_input("cli")
def test_backend_openvino_without_the_package_exits_2_naming_the_extra(monkeypatch, capsys):
    from lightning_accel.backends import openvino as openvino_backend

    def no_training(cfg):
        raise AssertionError(f"training started with {cfg}")

    monkeypatch.setattr("lightning_accel.cli.fit_job.run_pruning_job", no_training)
    monkeypatch.setattr(openvino_backend, "_OPENVINO_AVAILABLE", False)
    assert main(["fit", "--quick", "--backend", "openvino"]) == 2
    line = _error_line(capsys)
    assert "--backend openvino: the `openvino` package is not installed" in line
    assert 'pip install "lightning-accel[openvino]"' in line


@pytest.mark.bad_input("cli")
def test_a_flag_for_a_callback_the_recipe_lacks_is_refused(tmp_path: Path, capsys) -> None:
    text = (RECIPES / "small_cnn.yaml").read_text()
    start = text.index("    - class_path: lightning_accel.GradualPruning")
    end = text.index("    - class_path: lightning_accel.LatencyMonitor")
    path = tmp_path / "no_pruning.yaml"
    path.write_text(text[:start] + text[end:])
    assert main(["fit", "--recipe", str(path), "--target-sparsity", "0.3"]) == 2
    assert "callbacks.pruning.target_sparsity names no callback argument" in _error_line(capsys)


def test_a_bundled_recipe_name_is_accepted_and_located(monkeypatch, capsys) -> None:
    seen = {}
    monkeypatch.setattr(
        "lightning_accel.recipes.run.run_recipe",
        lambda path, overrides, **kwargs: seen.update(path=path) or {},
    )
    assert main(["fit", "--recipe", "small_cnn"]) == 0
    assert Path(seen["path"]) == CLEAN.resolve()
    assert f"recipe small_cnn: {CLEAN.resolve()}" in capsys.readouterr().err


@pytest.mark.bad_input("cli")
def test_an_unknown_recipe_name_lists_the_bundled_ones(capsys) -> None:
    assert main(["fit", "--recipe", "no_such_recipe"]) == 2
    line = _error_line(capsys)
    assert "Recipe no_such_recipe does not exist" in line and "small_cnn" in line


@pytest.mark.bad_input("cli")
def test_recipe_flags_without_a_recipe_are_refused(capsys) -> None:
    assert main(["fit", "--logger", "wandb"]) == 2
    assert "--logger: only used with a recipe; add --recipe FILE" in _error_line(capsys)


def test_latency_budget_flags_reach_the_callback(monkeypatch) -> None:
    from lightning_accel import LatencyBudgetPruning
    from lightning_accel.recipes.recipe import Recipe

    seen = {}
    monkeypatch.setattr(
        "lightning_accel.recipes.run.run_recipe",
        lambda path, overrides, **kwargs: seen.update(path=path, overrides=overrides) or {},
    )
    assert main(["fit", "--recipe", "resnet18_latency", "--target-speedup", "3"]) == 0
    assert seen["overrides"] == ["callbacks.latency_budget.target_speedup=3.0"]
    recipe = Recipe.from_yaml(seen["path"], seen["overrides"])
    (budget,) = [cb for cb in recipe.callbacks() if isinstance(cb, LatencyBudgetPruning)]
    assert budget.target_speedup == 3.0


@pytest.mark.bad_input("cli")
def test_latency_budget_flags_need_a_latency_budget_recipe(capsys) -> None:
    assert main(["fit", "--recipe", str(CLEAN), "--target-speedup", "2"]) == 2
    assert "callbacks.latency_budget.target_speedup names no callback" in _error_line(capsys)
    assert main(["fit", "--target-latency-ms", "1.5"]) == 2
    assert "--target-latency-ms: only used with a recipe" in _error_line(capsys)


@pytest.mark.bad_input("cli")
def test_serve_without_an_export_folder_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0], err
