"""Recipes: typed validation with errors naming file and key, overrides, LightningCLI, quick runs."""

from pathlib import Path

import pytest

from lightning_accel import GradualPruning, LatencyBudgetPruning
from lightning_accel.cli.main import main
from lightning_accel.recipes.recipe import Recipe, RecipeError, bundled_recipes
from lightning_accel.recipes.run import run_recipe

RECIPES = Path(__file__).parents[2] / "recipes"


def test_every_architecture_has_a_recipe_with_a_description() -> None:
    names = {p.stem for p in bundled_recipes()}
    assert {
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "vit_tiny",
        "small_cnn",
    } <= names
    for path in bundled_recipes():
        recipe = Recipe.from_yaml(path)
        assert len(recipe.description) > 20
        assert any(
            isinstance(c, (GradualPruning, LatencyBudgetPruning)) for c in recipe.callbacks()
        )


@pytest.mark.parametrize("path", bundled_recipes(), ids=lambda p: p.stem)
def test_recipe_quick_fit_exports_and_verifies(path: Path, tmp_path) -> None:
    summary = run_recipe(path, quick=True, logger="none", output_dir=tmp_path, progress=False)
    ort = summary["backends"]["onnxruntime"]
    recipe = Recipe.from_yaml(path)
    # (int8 convs, least top-1 agreement): an int8 model after a dozen batches has near-tied
    # logits, so a few flip. (A binarized one's int8 sums are exact; its float rounding can
    # still flip an input sitting on a sign threshold, which moves logits, rarely the top-1.)
    int8_expected = {"quantization": (20, 0.9), "binarization": (19, 0.9)}
    int8 = [n for n in int8_expected if recipe.callback_config(n) is not None]
    if not int8:
        assert ort["verification"]["passed"]
    else:
        convs, agreement = int8_expected[int8[0]]
        assert ort["verification"]["precision"] == "int8"
        assert ort["verification"]["top1_agreement"] >= agreement
        assert ort["info"]["integer_kernels"]["QLinearConv"] == convs
    assert ort["latency"]["1"]["speedup"] > 0
    assert (tmp_path / path.stem / "export" / "model.onnx").is_file()
    pruners = (GradualPruning, LatencyBudgetPruning)
    (pruning,) = [c for c in Recipe.from_yaml(path).callbacks() if isinstance(c, pruners)]
    pruned, dense = summary["model"], summary["baseline"]
    if getattr(pruning, "mode", "structured") == "structured":
        assert pruned["params"] < dense["params"]
    else:  # masks: same shapes, fewer non-zero weights
        assert pruned["params"] == dense["params"]
        assert pruned["nonzero_params"] < dense["nonzero_params"]


def test_dotted_overrides_reach_the_callbacks_model_data_and_trainer() -> None:
    recipe = Recipe.from_yaml(
        RECIPES / "resnet18.yaml",
        [
            "callbacks.pruning.target_sparsity=0.7",
            "model.lr=0.1",
            "data.train_size=100",
            "trainer.max_epochs=9",
        ],
    )
    (pruning,) = [c for c in recipe.callbacks() if isinstance(c, GradualPruning)]
    assert pruning.target_sparsity == 0.7
    assert recipe.build_model().hparams.lr == 0.1
    assert recipe.datamodule().train_size == 100
    assert recipe.trainer_kwargs()["max_epochs"] == 9


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


GOOD = (RECIPES / "small_cnn.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("model: [unclosed", [], r"bad.yaml is not valid YAML"),
        ("- just\n- a list\n", [], r"bad.yaml must hold a YAML mapping"),
        (GOOD + "optimizer: adam\n", [], r"bad.yaml: optimizer is not a recipe section"),
        (
            GOOD.replace("batch_size: 128", "batch_sze: 128"),
            [],
            r"data.batch_sze is not an argument of FashionMNISTDataModule \(allowed: batch_size",
        ),
        (
            GOOD.replace("target_sparsity: 0.8", "target_sparsity: high"),
            [],
            r"callbacks.pruning.target_sparsity must be a number; got 'high'",
        ),
        (
            GOOD.replace("mode: unstructured", "mode: sparse"),
            [],
            r"callbacks.pruning.mode must be one of \['structured', 'unstructured', '2:4'\]; got 'sparse'",
        ),
        (
            GOOD,
            ["callbacks.pruning.target_sparsity=1.5"],
            r"callbacks.pruning: target_sparsity must be in \[0, 1\); got 1.5",
        ),
        (
            GOOD,
            ["callbacks.quantization.weight_bits=4"],
            r"callbacks.quantization.weight_bits names no callback argument .*\['pruning', 'latency', 'export'\]",
        ),
        (GOOD, ["optimizer.lr=0.1"], r"optimizer.lr is not a recipe key"),
        (GOOD, ["trainer.max_epochs"], r"must look like key=value"),
        (
            GOOD.replace("lightning_accel.ClassificationModule", "timm_models_not_installed.Model"),
            [],
            r"model.class_path 'timm_models_not_installed.Model' cannot be imported .*pip install",
        ),
        (
            GOOD.replace("max_epochs: 6", "max_epochs: six"),
            [],
            r"trainer.max_epochs must be .*; got 'six'",
        ),
    ],
)
@pytest.mark.bad_input("recipe")
def test_bad_recipes_name_the_file_the_key_and_the_fix(tmp_path, text, overrides, message) -> None:
    with pytest.raises(RecipeError, match=message):
        Recipe.from_yaml(_write(tmp_path, text), overrides)


def test_recipes_work_with_lightning_cli(tmp_path) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        args=[
            "--config",
            str(RECIPES / "resnet18.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
    )
    assert type(cli.model).__name__ == "ClassificationModule"
    assert type(cli.datamodule).__name__ == "FashionMNISTDataModule"
    assert any(
        isinstance(c, GradualPruning) and c.target_sparsity == 0.5 for c in cli.trainer.callbacks
    )


@pytest.mark.bad_input("cli")
def test_cli_lists_recipes_and_exits_2_on_a_bad_override(capsys) -> None:
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "resnet18" in listing and "50% of channels pruned" in listing
    assert (
        main(
            [
                "fit",
                "--recipe",
                str(RECIPES / "resnet18.yaml"),
                "--set",
                "callbacks.pruning.mode=magic",
            ]
        )
        == 2
    )
    assert "callbacks.pruning.mode must be one of" in capsys.readouterr().err
