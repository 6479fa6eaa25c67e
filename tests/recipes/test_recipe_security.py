"""Names in recipes, sweep files and `export --module` resolve to classes of the right kind only.

Every test plants a command that would create a marker file if anything called the object a
file names, and asserts the marker is absent after the refusal.
"""

import sys
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_accel.cli.main import main
from lightning_accel.export.checkpoint import import_module_class
from lightning_accel.recipes.recipe import Recipe, RecipeError
from lightning_accel.recipes.typecheck import signature_hints
from lightning_accel.sweeps.config import SweepConfig, SweepError

RECIPES = Path(__file__).parents[2] / "recipes"
CLEAN = RECIPES / "small_cnn.yaml"
CALLBACKS = "  callbacks:\n"


def _with_first_callback(tmp_path: Path, entry: str) -> Path:
    """small_cnn.yaml with ``entry`` (YAML flow mapping) as its first callback."""
    text = CLEAN.read_text()
    assert CALLBACKS in text
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace(CALLBACKS, f"{CALLBACKS}    - {entry}\n", 1))
    return path


def _system(marker: Path) -> str:
    return f'{{class_path: os.system, init_args: {{command: "touch {marker}"}}}}'


@pytest.mark.bad_input("recipe")
def test_a_function_as_callback_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "X"
    path = _with_first_callback(tmp_path, _system(marker))
    with pytest.raises(
        RecipeError,
        match=r"recipe.yaml: trainer.callbacks\[0\].class_path 'os.system' is a built-in function, "
        r"not a class derived from lightning.pytorch.callbacks.Callback \(allowed: a Callback "
        r"subclass such as lightning_accel.GradualPruning\)",
    ):
        Recipe.from_yaml(path)
    assert not marker.exists()


@pytest.mark.bad_input("cli")
def test_a_function_set_on_the_command_line_is_refused_before_it_runs(
    tmp_path: Path, capsys
) -> None:
    marker = tmp_path / "X"
    code = main(["fit", "--recipe", str(CLEAN), "--set", f"trainer.callbacks=[{_system(marker)}]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "trainer.callbacks[0].class_path 'os.system'" in err
    assert "lightning.pytorch.callbacks.Callback" in err
    assert not marker.exists()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "- class_path: lightning_accel.GradualPruning",
            "- class_path: collections.OrderedDict",
            r"trainer.callbacks\[0\].class_path 'collections.OrderedDict' is a class, but not a "
            r"subclass of lightning.pytorch.callbacks.Callback",
        ),
        (
            "class_path: lightning_accel.ClassificationModule",
            "class_path: lightning_accel.GradualPruning",
            r"model.class_path 'lightning_accel.GradualPruning' is a class, but not a subclass of "
            r"lightning.pytorch.LightningModule \(allowed: .*lightning_accel.ClassificationModule",
        ),
        (
            "class_path: lightning_accel.FashionMNISTDataModule",
            "class_path: lightning_accel.ClassificationModule",
            r"data.class_path 'lightning_accel.ClassificationModule' is a class, but not a "
            r"subclass of lightning.pytorch.LightningDataModule",
        ),
        (
            "class_path: lightning_accel.ClassificationModule",
            "class_path: builtins.eval",
            r"model.class_path 'builtins.eval' is a built-in function, not a class",
        ),
        (
            "class_path: lightning_accel.ClassificationModule",
            "class_path: ClassificationModule",
            r"model.class_path 'ClassificationModule' is not a dotted class name",
        ),
        (
            "class_path: lightning_accel.ClassificationModule",
            "class_path: lightning_accel.NoSuchModule",
            r"model.class_path 'lightning_accel.NoSuchModule' does not exist",
        ),
    ],
    ids=["dict-as-callback", "callback-as-model", "module-as-data", "eval", "undotted", "missing"],
)
@pytest.mark.bad_input("recipe")
def test_a_class_path_of_the_wrong_kind_is_refused(tmp_path, old, new, message) -> None:
    text = CLEAN.read_text()
    assert old in text
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(RecipeError, match=message):
        Recipe.from_yaml(path)


@pytest.mark.bad_input("recipe")
def test_a_class_of_the_wrong_kind_is_never_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "X"
    entry = f"{{class_path: subprocess.Popen, init_args: {{args: [touch, {marker}]}}}}"
    with pytest.raises(RecipeError, match=r"'subprocess.Popen' is a class, but not a subclass"):
        Recipe.from_yaml(_with_first_callback(tmp_path, entry))
    assert not marker.exists()


@pytest.mark.bad_input("recipe")
def test_functions_in_a_users_module_are_looked_up_never_called(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "X"
    (tmp_path / "user_code.py").write_text(
        "from pathlib import Path\n"
        f"def make_callback(**kwargs):\n    Path({str(marker)!r}).touch()\n"
        f"class Recorder:\n    def __init__(self, **kwargs):\n        Path({str(marker)!r}).touch()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_code", raising=False)
    for name in ("user_code.make_callback", "user_code.Recorder"):
        with pytest.raises(RecipeError, match=rf"trainer.callbacks\[0\].class_path '{name}'"):
            Recipe.from_yaml(_with_first_callback(tmp_path, f"{{class_path: {name}}}"))
        with pytest.raises(ValueError, match=rf"'{name}' is not a LightningModule class"):
            import_module_class(name)
    assert not marker.exists()


def test_loggers_must_be_logger_classes_and_are_built_from_their_entries(tmp_path) -> None:
    marker = tmp_path / "X"
    with pytest.raises(
        RecipeError,
        match=r"trainer.logger.class_path 'os.system' is a built-in function, not a class derived "
        r"from lightning.pytorch.loggers.Logger",
    ):
        Recipe.from_yaml(CLEAN, [f"trainer.logger={_system(marker)}"])
    assert not marker.exists()
    with pytest.raises(
        RecipeError, match=r"trainer.logger must be true, false, null or class_path"
    ):
        Recipe.from_yaml(CLEAN, ["trainer.logger=csv"])
    entry = (
        f"{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {tmp_path}}}}}"
    )
    (logger,) = Recipe.from_yaml(CLEAN, [f"trainer.logger={entry}"]).trainer_kwargs()["logger"]
    assert isinstance(logger, CSVLogger) and logger.save_dir == str(tmp_path)


@pytest.mark.bad_input("cli")
def test_export_module_refuses_functions_and_other_classes() -> None:
    with pytest.raises(
        ValueError, match=r"'os.system' is not a LightningModule class: .*built-in function"
    ):
        import_module_class("os.system")
    with pytest.raises(ValueError, match=r"'torch.nn.Linear' is not a LightningModule class"):
        import_module_class("torch.nn.Linear")
    assert import_module_class("lightning_accel.ClassificationModule").__name__ == (
        "ClassificationModule"
    )


def test_signature_hints_only_reads_classes() -> None:
    with pytest.raises(TypeError, match="signature_hints takes a class"):
        signature_hints(print)  # type: ignore[arg-type]


def _sweep(tmp_path: Path, parameters: str, command: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "method: grid\nmetric: {name: sweep/objective, goal: maximize}\n"
        f"parameters:\n{parameters}\ncommand: {command}\n"
    )
    return path


@pytest.mark.bad_input("recipe")
def test_sweep_values_naming_a_function_are_refused_before_any_trial(tmp_path) -> None:
    marker = tmp_path / "X"
    command = f"[lightning-accel, fit, --recipe, {CLEAN}]"
    parameters = f"  trainer.callbacks: {{values: [[{_system(marker)}]]}}"
    with pytest.raises(SweepError, match=r"trainer.callbacks\[0\].class_path 'os.system'"):
        SweepConfig.from_yaml(_sweep(tmp_path, parameters, command))
    assert not marker.exists()


@pytest.mark.parametrize(
    "launcher",
    ["[bash, -c, 'touch X', fit", "[python, -m, os, fit", "['${program}', fit"],
)
@pytest.mark.bad_input("recipe")
def test_sweep_commands_must_run_lightning_accel(tmp_path, launcher) -> None:
    parameters = "  callbacks.pruning.target_sparsity: {values: [0.5]}"
    path = _sweep(tmp_path, parameters, f"{launcher}, --recipe, {CLEAN}]")
    with pytest.raises(SweepError, match=r"command must run `lightning-accel fit`; it runs"):
        SweepConfig.from_yaml(path)


def test_sweep_commands_may_run_the_module_with_an_interpreter(tmp_path) -> None:
    parameters = "  callbacks.pruning.target_sparsity: {values: [0.5]}"
    command = f"['${{env}}', '${{interpreter}}', -m, lightning_accel.cli, fit, --recipe, {CLEAN}]"
    assert SweepConfig.from_yaml(_sweep(tmp_path, parameters, command)).recipe == CLEAN


@pytest.mark.bad_input("recipe")
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.model={class_path: os.system}", r"model\.model must not be a \{class_path"),
        ("trainer.strategy={class_path: os.system}", r"trainer\.strategy must not be a \{class_"),
        ("trainer.plugins=[{class_path: os.system}]", r"trainer\.plugins"),
        ("trainer.default_root_dir={a: 1}", r"trainer\.default_root_dir must be"),
    ],
)
def test_nested_objects_and_wrong_shapes_are_refused_at_validation(override, message) -> None:
    with pytest.raises(RecipeError, match=message):
        Recipe.from_yaml(CLEAN, [override])


@pytest.mark.bad_input("recipe")
def test_a_class_inside_a_main_module_is_refused_before_importing_it(tmp_path: Path) -> None:
    before = set(sys.modules)
    path = _with_first_callback(tmp_path, "{class_path: lightning_accel.cli.__main__.X}")
    with pytest.raises(RecipeError, match=r"inside a __main__ module, which runs a program"):
        Recipe.from_yaml(path)
    assert "lightning_accel.cli.__main__" not in set(sys.modules) - before


@pytest.mark.bad_input("recipe")
def test_sweep_launchers_must_be_bare_names_and_command_overrides_are_checked(tmp_path) -> None:
    def sweep(command: str) -> Path:
        path = tmp_path / "sweep.yaml"
        path.write_text(
            "method: grid\nmetric: {name: val/acc, goal: maximize}\n"
            "parameters:\n  callbacks.pruning.target_sparsity: {values: [0.5]}\n"
            f"command: {command}\n"
        )
        return path

    fit = f"fit, --recipe, {CLEAN}"
    with pytest.raises(SweepError, match="command must run `lightning-accel fit`"):
        SweepConfig.from_yaml(sweep(f"[/tmp/x/python, -m, lightning_accel.cli, {fit}]"))
    with pytest.raises(SweepError, match=r"trainer\.logger.*os\.system"):
        SweepConfig.from_yaml(
            sweep(f"[lightning-accel, {fit}, --set, 'trainer.logger={{class_path: os.system}}']")
        )
