import copy
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_accel import ClassificationModule, GradualPruning
from tests.conftest import quiet_trainer, small_module


def _fit(module, data, callback, tmp_path, epochs=3, **trainer_kwargs):
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=[callback], **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return trainer


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(target_sparsity=1.0), r"target_sparsity must be in \[0, 1\); got 1.0"),
        (dict(target_sparsity=-0.1), r"target_sparsity must be in \[0, 1\); got -0.1"),
        (
            dict(target_sparsity=0.5, start_epoch=3, end_epoch=3),
            "end_epoch must be after start_epoch",
        ),
        (dict(target_sparsity=0.5, mode="channel"), "mode must be one of"),
        (dict(target_sparsity=0.5, schedule="exp"), "schedule must be one of"),
        (dict(target_sparsity=0.7, mode="2:4"), "target_sparsity must be 0.5"),
        (
            dict(target_sparsity=0.5, update_every_n_steps=0),
            "update_every_n_steps must be a positive",
        ),
        (dict(target_sparsity=0.5, scope="net"), "scope must be one of"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_invalid_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GradualPruning(**kwargs)


@pytest.mark.bad_input("schedule")
def test_schedule_that_cannot_finish_is_refused_before_training(digits, tmp_path) -> None:
    module = small_module()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(
        ValueError, match=r"cannot finish.*end_epoch=3.*max_epochs=3.*end_epoch <= 2"
    ):
        _fit(module, digits, GradualPruning(0.5, end_epoch=3), tmp_path, epochs=3)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.bad_input("constructor")
def test_ignore_pattern_matching_nothing_is_refused_before_any_change(digits, tmp_path) -> None:
    module = small_module()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(ValueError, match=r"pattern 'model\.fc' matches no layer"):
        _fit(module, digits, GradualPruning(0.5, end_epoch=1, ignore=["model.fc"]), tmp_path)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.bad_input("data")
def test_model_without_prunable_layer_is_refused(digits, tmp_path) -> None:
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    module = ClassificationModule(linear, input_size=8)
    with pytest.raises(ValueError, match="found no layer to compress"):
        _fit(module, digits, GradualPruning(0.5, end_epoch=1), tmp_path)


# ----------------------------------------------------------------------------- structured
def test_structured_pruning_shrinks_the_model_and_logs_every_epoch(digits, tmp_path) -> None:
    module = small_module()
    dense_params = sum(p.numel() for p in module.parameters())
    logger = CSVLogger(tmp_path, name="log")
    _fit(module, digits, GradualPruning(0.5, end_epoch=2), tmp_path, logger=logger)
    assert sum(p.numel() for p in module.parameters()) < 0.4 * dense_params
    assert module.model[4].weight.shape[:2] == (16, 16)  # out 32 -> 16; input from the dense stem
    assert module.model[8].weight.shape[:2] == (32, 16)  # out 64 -> 32, in 32 -> 16
    import csv

    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    per_epoch = [r for r in rows if r.get("compress/sparsity")]
    assert [int(r["epoch"]) for r in per_epoch] == [0, 1, 2]
    assert float(per_epoch[-1]["compress/sparsity"]) == pytest.approx(0.5)
    # measured against the dense model at train start: epoch 0 already prunes (cubic start)
    params_kept = sum(p.numel() for p in module.parameters()) / dense_params
    assert float(per_epoch[-1]["compress/params_kept"]) == pytest.approx(params_kept)
    assert float(per_epoch[-1]["compress/params_kept"]) < float(
        per_epoch[0]["compress/params_kept"]
    )
    assert float(per_epoch[-1]["compress/macs_kept"]) < float(per_epoch[0]["compress/macs_kept"])
    assert "model/params" not in rows[0]  # LatencyMonitor owns model/*


class _OptimizerProbe(Callback):
    """Checks, right after pruning, that the optimizer holds the model's new parameters."""

    def __init__(self) -> None:
        self.checked = 0
        self.before: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        params = {id(p) for p in pl_module.parameters()}
        in_optimizer = {
            id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]
        }
        assert params == in_optimizer
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        changed = [
            not torch.equal(self.before[n], p)
            for n, p in pl_module.named_parameters()
            if "weight" in n
        ]
        assert all(changed), "some parameters were not updated by the optimizer"
        self.checked += 1


def test_optimizer_is_rebuilt_and_updates_the_new_parameters(digits, tmp_path) -> None:
    module = small_module()
    probe = _OptimizerProbe()
    pruning = GradualPruning(0.5, end_epoch=2, update_every_n_steps=5)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[pruning, probe])
    trainer.fit(module, datamodule=digits)
    assert probe.checked == 3 * trainer.num_training_batches
    assert pruning.applied_sparsity == pytest.approx(0.5)


def test_learning_rate_schedule_survives_optimizer_rebuild(digits, tmp_path) -> None:
    module = small_module(cosine_epochs=4)
    _fit(module, digits, GradualPruning(0.5, end_epoch=2), tmp_path, epochs=4)
    reference = small_module(cosine_epochs=4)
    _fit(reference, digits, Callback(), tmp_path, epochs=4)
    lr = module.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(reference.trainer.optimizers[0].param_groups[0]["lr"])
    assert lr < 0.05


def test_many_small_pruning_steps_land_exactly_on_the_target_width(digits, tmp_path) -> None:
    module = small_module()
    _fit(module, digits, GradualPruning(0.5, end_epoch=2, update_every_n_steps=1), tmp_path)
    widths = [module.model[i].weight.shape[0] for i in (4, 8, 11)]
    assert widths == [16, 32, 32]  # half of 32, 64, 64: rounding does not accumulate


def test_widths_off_multiples_of_8_warn_and_round_to_8_keeps_them_aligned(digits, tmp_path) -> None:
    module = small_module()
    with pytest.warns(UserWarning, match=r"not multiples of 8 .*Pass round_to=8"):
        _fit(module, digits, GradualPruning(0.3, end_epoch=1), tmp_path, epochs=2)
    assert any(module.model[i].weight.shape[0] % 8 for i in (4, 8, 11))

    aligned = small_module()
    _fit(aligned, digits, GradualPruning(0.3, end_epoch=1, round_to=8), tmp_path, epochs=2)
    assert all(aligned.model[i].weight.shape[0] % 8 == 0 for i in (4, 8, 11))


# ----------------------------------------------------------------------------- masks
def test_unstructured_reaches_exact_sparsity_with_a_clean_state_dict(digits, tmp_path) -> None:
    module = small_module()
    pruning = GradualPruning(0.8, mode="unstructured", end_epoch=2, update_every_n_steps=4)
    _fit(module, digits, pruning, tmp_path)
    assert set(module.state_dict()) == set(small_module().state_dict())
    pruned = [module.model[i].weight for i in (4, 8, 11)]
    zeros = sum(int((w == 0).sum()) for w in pruned) / sum(w.numel() for w in pruned)
    assert zeros == pytest.approx(0.8, abs=1e-3)
    assert int((module.model[0].weight == 0).sum()) == 0  # first conv stays dense
    assert int((module.model[-1].weight == 0).sum()) == 0  # classifier stays dense


def test_layer_scope_prunes_every_layer_to_the_target(digits, tmp_path) -> None:
    module = small_module()
    _fit(
        module,
        digits,
        GradualPruning(0.6, mode="unstructured", scope="layer", end_epoch=1),
        tmp_path,
        epochs=2,
    )
    for i in (4, 8, 11):
        assert float((module.model[i].weight == 0).float().mean()) == pytest.approx(0.6, abs=2e-3)


def test_2_4_pattern_holds_after_training(digits, tmp_path) -> None:
    module = small_module()
    _fit(module, digits, GradualPruning(0.5, mode="2:4", end_epoch=1), tmp_path, epochs=2)
    for i in (4, 8, 11):
        groups = (module.model[i].weight != 0).movedim(1, -1).reshape(-1, 4)
        assert (groups.sum(dim=1) <= 2).all()


def test_unstructured_accuracy_survives_high_sparsity(digits, tmp_path) -> None:
    module = small_module()
    trainer = _fit(
        module, digits, GradualPruning(0.8, mode="unstructured", end_epoch=3), tmp_path, epochs=5
    )
    assert trainer.callback_metrics["val/acc"] > 0.9


@pytest.mark.bad_input("data")
def test_layer_structured_pruning_cannot_handle_is_refused_before_any_change(
    digits, tmp_path
) -> None:
    class Mixer(torch.nn.Module):  # a raw [C, C] parameter: no known dimension to cut
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.mix = torch.nn.Parameter(torch.eye(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,cd->bdhw", x, self.mix)

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        Mixer(16),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )
    module = ClassificationModule(net, input_size=8)
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(ValueError, match=r"cannot handle layer 'model.2' \(Mixer\)"):
        _fit(module, digits, GradualPruning(0.5, end_epoch=1), tmp_path)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
