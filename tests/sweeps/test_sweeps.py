"""Sweeps over recipe keys: validation, search, the objective, the Pareto front, a local sweep."""

import json
import random
from pathlib import Path

import pytest

from lightning_accel.cli.main import main
from lightning_accel.sweeps.config import SweepConfig, SweepError
from lightning_accel.sweeps.objective import objective
from lightning_accel.sweeps.results import Trial, mark_pareto_front
from lightning_accel.sweeps.search import bayes_point, grid_points, random_point
from tests.wandb_records import history_rows, read_records, summary_values

ROOT = Path(__file__).parents[2]
SWEEPS = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))
SMALL_CNN = ROOT / "recipes" / "small_cnn.yaml"


def _sweep_file(tmp_path: Path, body: str, command: str | None = None) -> Path:
    command = command or f"[lightning-accel, fit, --recipe, {SMALL_CNN}, --logger, wandb]"
    path = tmp_path / "sweep.yaml"
    path.write_text(body + f"\ncommand: {command}\n")
    return path


GRID = """
method: grid
metric: {name: sweep/objective, goal: maximize}
parameters:
  callbacks.pruning.target_sparsity: {values: [0.5, 0.9]}
"""


def test_bundled_sweeps_cover_grid_random_bayes_and_pass_wandbs_own_schema() -> None:
    methods = {SweepConfig.from_yaml(path).method for path in SWEEPS}
    assert methods == {"grid", "random", "bayes"}
    sweeps = pytest.importorskip("sweeps", reason="W&B's sweep engine is installed by setup.sh")
    import yaml

    for path in SWEEPS:
        assert sweeps.schema_violations_from_proposed_config(yaml.safe_load(path.read_text())) == []


def test_grid_is_the_product_and_random_is_seeded_and_in_range() -> None:
    grid = SweepConfig.from_yaml(ROOT / "recipes" / "sweeps" / "resnet18_sparsity_grid.yaml")
    points = grid_points(grid)
    assert len(points) == 6 and len({tuple(p.values()) for p in points}) == 6

    rand = SweepConfig.from_yaml(ROOT / "recipes" / "sweeps" / "resnet18_random.yaml")
    first = [random_point(rand, random.Random(3)) for _ in range(1)]
    again = [random_point(rand, random.Random(3)) for _ in range(1)]
    assert first == again
    rng = random.Random(0)
    for _ in range(50):
        point = random_point(rand, rng)
        assert 0.2 <= point["callbacks.pruning.target_sparsity"] <= 0.8
        assert 0.01 <= point["model.lr"] <= 0.2


def test_bayes_proposes_points_in_range_from_finished_trials() -> None:
    pytest.importorskip("sweeps", reason="W&B's sweep engine is installed by setup.sh")
    bayes = SweepConfig.from_yaml(ROOT / "recipes" / "sweeps" / "small_cnn_bayes.yaml")
    finished = [
        ({"callbacks.pruning.target_sparsity": 0.6, "callbacks.pruning.end_epoch": 2}, 0.8),
        ({"callbacks.pruning.target_sparsity": 0.9, "callbacks.pruning.end_epoch": 4}, 0.7),
    ]
    point = bayes_point(bayes, finished)
    assert 0.5 <= point["callbacks.pruning.target_sparsity"] <= 0.95
    assert point["callbacks.pruning.end_epoch"] in (2, 3, 4)
    assert isinstance(point["callbacks.pruning.target_sparsity"], float)  # not a numpy scalar


def test_objective_is_accuracy_within_budget_and_penalized_past_it() -> None:
    assert objective(0.9, 0.8, 1.0) == 0.9
    assert objective(0.9, 1.5, 1.0) == pytest.approx(0.4)
    assert objective(0.9, 5.0, None) == 0.9


def test_pareto_front_keeps_exactly_the_undominated_trials() -> None:
    def trial(n: int, acc: float, ms: float) -> Trial:
        return Trial(n, {}, result={"sweep/accuracy": acc, "sweep/latency_ms": ms})

    trials = [trial(0, 0.90, 2.0), trial(1, 0.88, 1.0), trial(2, 0.87, 1.5), trial(3, 0.91, 3.0)]
    trials.append(Trial(4, {}, error="crashed"))
    front = mark_pareto_front(trials)
    assert [t.number for t in front] == [1, 0, 3]  # sorted by latency; 2 is beaten by 1
    assert not trials[2].pareto and not trials[4].pareto


def test_local_grid_sweep_runs_two_offline_trials_and_reports_the_front(tmp_path: Path, capsys):
    path = _sweep_file(tmp_path, GRID)
    out = tmp_path / "out"
    code = main(["sweep", str(path), "--local", "--quick", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    trials = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [t["values"]["callbacks.pruning.target_sparsity"] for t in trials] == [0.5, 0.9]
    for t in trials:
        assert t["error"] is None
        assert 0.0 <= t["result"]["sweep/accuracy"] <= 1.0 and t["result"]["sweep/latency_ms"] > 0
        # each trial is its own offline W&B run that logged the trial metrics
        (run,) = (Path(t["folder"]) / "small_cnn").glob("wandb/offline-run-*/run-*.wandb")
        logged = [row for row in history_rows(read_records(run)) if "sweep/accuracy" in row]
        assert logged[-1]["sweep/accuracy"] == pytest.approx(t["result"]["sweep/accuracy"])
    assert any(t["pareto"] for t in trials)
    assert "Pareto front" in printed and "| 0 | 0.5 |" in printed
    (summary_run,) = (out / "sweep").glob("wandb/offline-run-*/run-*.wandb")
    assert summary_values(read_records(summary_run))["sweep/finished"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("method: grid\nmetric: [oops", "is not valid YAML"),
        (GRID + "recipe: x.yaml\n", "unknown keys ['recipe']"),
        (GRID.replace("grid", "hyperband"), "method must be one of ('grid', 'random', 'bayes')"),
        (
            GRID.replace("callbacks.pruning.target_sparsity", "callbacks.pruning.sparsity_goal"),
            "parameter callbacks.pruning.sparsity_goal=0.5 does not fit recipe",
        ),
        (GRID.replace("[0.5, 0.9]", "[0.5, 1.5]"), "target_sparsity must be in [0, 1)"),
        (GRID.replace("[0.5, 0.9]", "[0.5, lots]"), "target_sparsity must be a number; got 'lots'"),
        (GRID.replace("{values: [0.5, 0.9]}", "{min: 0.1, max: 0.9}"), "a grid sweep needs"),
        (GRID.replace("sweep/objective", "latency/tensorrt/b1_ms"), "is logged by nothing"),
        (GRID.replace("{name: sweep/objective, goal: maximize}", "val/acc"),
         "metric must be a mapping with a name"),
        (GRID.replace("goal: maximize", "goal: highest"), "metric.goal must be one of"),
        (GRID.replace("{values: [0.5, 0.9]}", "{values: [0.5], bins: 3}"),
         "has unknown keys ['bins']"),
        (GRID.replace("{values: [0.5, 0.9]}", "0.5"), "must give values: [...]"),
    ],
    ids=["not-yaml", "unknown-key", "method", "not-a-recipe-key", "range", "type", "grid-range",
         "metric", "metric-shape", "goal", "spec-key", "spec-shape"],
)  # fmt: skip
@pytest.mark.bad_input("recipe")
def test_bad_sweep_files_are_refused_before_any_trial(tmp_path, body, message, capsys) -> None:
    path = _sweep_file(tmp_path, body)
    with pytest.raises(SweepError) as error:
        SweepConfig.from_yaml(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert main(["sweep", str(path), "--local", "--output-dir", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()  # nothing ran


@pytest.mark.bad_input("recipe")
def test_command_without_recipe_and_random_without_count_are_refused(tmp_path, capsys) -> None:
    with pytest.raises(SweepError, match="command names no --recipe"):
        SweepConfig.from_yaml(_sweep_file(tmp_path, GRID, "[lightning-accel, fit]"))
    with pytest.raises(SweepError, match="recipe nowhere.yaml does not exist"):
        SweepConfig.from_yaml(_sweep_file(tmp_path, GRID, "[x, fit, --recipe, nowhere.yaml]"))
    rand = _sweep_file(tmp_path, GRID.replace("grid", "random"))
    assert main(["sweep", str(rand), "--local"]) == 2
    assert "never ends by itself: pass --count N" in capsys.readouterr().err


@pytest.mark.bad_input("cli")
def test_missing_sweep_file_and_non_positive_budget_or_count_are_refused(tmp_path, capsys):
    with pytest.raises(SweepError, match="Sweep file .*nowhere.yaml does not exist"):
        SweepConfig.from_yaml(tmp_path / "nowhere.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- method\n- metric\n")
    with pytest.raises(SweepError, match="must hold a mapping of W&B sweep keys"):
        SweepConfig.from_yaml(listing)
    command = f"[lightning-accel, fit, --recipe, {SMALL_CNN}, --latency-budget-ms, '0']"
    with pytest.raises(SweepError, match="--latency-budget-ms must be > 0; got 0.0"):
        SweepConfig.from_yaml(_sweep_file(tmp_path, GRID, command))
    assert main(["sweep", str(_sweep_file(tmp_path, GRID)), "--local", "--count", "0"]) == 2
    assert "--count must be >= 1; got 0" in capsys.readouterr().err


def test_without_credentials_the_agent_mode_says_to_use_local(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["sweep", str(_sweep_file(tmp_path, GRID))]) == 1
    assert "--local" in capsys.readouterr().err
