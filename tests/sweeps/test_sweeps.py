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
    assert random_point(rand, "3-0") == random_point(rand, "3-0")
    assert random_point(rand, "3-0") != random_point(rand, "3-1")
    state = random.getstate()
    for number in range(50):
        point = random_point(rand, f"0-{number}")
        assert 0.2 <= point["callbacks.pruning.target_sparsity"] <= 0.8
        assert 0.01 <= point["model.lr"] <= 0.2
    assert random.getstate() == state  # the caller's random state is left alone


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
        records = read_records(run)
        logged = [row for row in history_rows(records) if "sweep/accuracy" in row]
        assert logged[-1]["sweep/accuracy"] == pytest.approx(t["result"]["sweep/accuracy"])
        # named after its values, grouped by sweep, its swept value in its config
        (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        value = t["values"]["callbacks.pruning.target_sparsity"]
        assert info.display_name == f"trial-{t['number']} target_sparsity={value}"
        assert info.run_group == "sweep" and info.job_type == "sweep-trial"
        config = {
            item.key: json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") in ("config", "run")
            for item in (
                r.config.update if r.WhichOneof("record_type") == "config" else r.run.config.update
            )
        }
        assert config["callbacks.pruning.target_sparsity"] == value
        assert config["recipe.name"] == "small_cnn" and config["recipe.quick"] is True
    assert any(t["pareto"] for t in trials)
    assert "Pareto front" in printed and "| 0 | 0.5 |" in printed
    (summary_run,) = (out / "sweep").glob("wandb/offline-run-*/run-*.wandb")
    assert summary_values(read_records(summary_run))["sweep/finished"] == 2
    assert (out / "sweep" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


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


@pytest.mark.bad_input("cli")
def test_without_credentials_the_agent_mode_exits_2_and_says_to_use_local(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["sweep", str(_sweep_file(tmp_path, GRID))]) == 2  # bad input, nothing ran
    assert "--local" in capsys.readouterr().err


def _draws(tmp_path: Path, spec: str, n: int = 200) -> list:
    body = (
        "method: random\nmetric: {name: sweep/objective, goal: maximize}\n"
        f"parameters:\n  {spec}\n"
    )
    sweep = SweepConfig.from_yaml(_sweep_file(tmp_path, body))
    (key,) = sweep.parameters
    return [random_point(sweep, f"0-{i}")[key] for i in range(n)]


def test_log_uniform_bounds_are_exponents_as_in_wandb(tmp_path: Path) -> None:
    values = _draws(tmp_path, "model.lr: {distribution: log_uniform, min: -9.2, max: -2.3}")
    assert all(1e-4 <= v <= 0.101 for v in values)  # e^-9.2 .. e^-2.3, never negative


def test_q_log_uniform_values_is_log_uniform_with_integers(tmp_path: Path) -> None:
    spec = "data.batch_size: {distribution: q_log_uniform_values, min: 1, max: 1000}"
    values = _draws(tmp_path, spec)
    assert all(isinstance(v, int) and 1 <= v <= 1000 for v in values)
    assert 15 <= sorted(values)[len(values) // 2] <= 70  # about sqrt(1000) = 32, not 500


def test_pareto_ties_latencies_within_their_measured_spread() -> None:
    def trial(n: int, acc: float, ms: float, iqr: float) -> Trial:
        return Trial(
            n,
            {},
            result={"sweep/accuracy": acc, "sweep/latency_ms": ms, "sweep/latency_iqr_ms": iqr},
        )

    close = [trial(0, 0.90, 0.080, 0.004), trial(1, 0.88, 0.078, 0.004)]
    assert [t.number for t in mark_pareto_front(close)] == [0]  # 2 us apart: one point, not two
    apart = [trial(0, 0.90, 0.080, 0.0005), trial(1, 0.88, 0.078, 0.0005)]
    assert [t.number for t in mark_pareto_front(apart)] == [1, 0]  # measured apart: a trade-off


def _fake_trials(monkeypatch) -> list:
    ran = []

    def fake_run_trial(sweep, trial, folder, quick):
        ran.append(trial)
        trial.result = {"sweep/accuracy": 0.5, "sweep/latency_ms": 1.0, "sweep/objective": 0.5}
        return trial

    monkeypatch.setattr("lightning_accel.sweeps.runner.run_trial", fake_run_trial)
    monkeypatch.setattr("lightning_accel.sweeps.results.log_sweep_to_wandb", lambda *a: None)
    return ran


RANDOM = GRID.replace("grid", "random").replace("{values: [0.5, 0.9]}", "{min: 0.3, max: 0.9}")


def test_run_cap_caps_a_local_sweep(tmp_path: Path, monkeypatch) -> None:
    from lightning_accel.sweeps.runner import run_local

    ran = _fake_trials(monkeypatch)
    sweep = SweepConfig.from_yaml(_sweep_file(tmp_path, RANDOM + "run_cap: 2\n"))
    assert len(run_local(sweep, None, tmp_path / "out", progress=lambda m: None)) == 2
    assert len(run_local(sweep, 5, tmp_path / "out", progress=lambda m: None)) == 2
    grid = SweepConfig.from_yaml(_sweep_file(tmp_path, GRID + "run_cap: 1\n"))
    assert len(run_local(grid, None, tmp_path / "out", progress=lambda m: None)) == 1
    assert len(ran) == 5


@pytest.mark.bad_input("recipe")
def test_early_terminate_and_a_bad_run_cap_are_refused_locally(tmp_path: Path, capsys) -> None:
    stop = "early_terminate: {type: hyperband, min_iter: 2}\n"
    path = _sweep_file(tmp_path, GRID + stop)
    assert main(["sweep", str(path), "--local", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "early_terminate (hyperband)" in err and "with the W&B agent (without --local)" in err
    path = _sweep_file(tmp_path, GRID + "run_cap: 0\n")
    assert main(["sweep", str(path), "--local", "--output-dir", str(tmp_path / "o")]) == 2
    assert "run_cap must be an integer >= 1; got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_local_trials_are_named_after_their_values_and_grouped(tmp_path: Path) -> None:
    from lightning_accel.sweeps.runner import trial_name

    trial = Trial(2, {"callbacks.pruning.target_sparsity": 0.7, "callbacks.pruning.end_epoch": 3})
    assert trial_name(trial) == "trial-2 target_sparsity=0.7 end_epoch=3"


@pytest.mark.parametrize("end_epoch", [2, 3, 4])
def test_quick_scales_the_swept_schedule_so_bayes_trials_can_run(end_epoch: int) -> None:
    from lightning_accel.recipes.recipe import Recipe
    from lightning_accel.recipes.run import quick_overrides

    swept = [f"callbacks.pruning.end_epoch={end_epoch}"]
    quick = quick_overrides(Recipe.from_yaml(SMALL_CNN, swept))
    recipe = Recipe.from_yaml(SMALL_CNN, swept + quick)
    pruning = recipe.callback_config("pruning")
    max_epochs = recipe.config["trainer"]["max_epochs"]
    assert max_epochs == 2 and pruning["start_epoch"] < pruning["end_epoch"] < max_epochs


def test_bundled_sweeps_find_their_recipe_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: the bundled recipe is found by name
    for path in SWEEPS:
        assert SweepConfig.from_yaml(path).recipe.parent == ROOT / "recipes"
