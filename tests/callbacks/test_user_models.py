"""The user's own model (issue #12): shared weights and reparametrized layers."""

from __future__ import annotations

import copy
import re
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_accel import ClassificationModule, GradualPruning, QuantizationAware
from lightning_accel.pruning.masks import weight_owners, weight_sparsity
from tests.conftest import quiet_trainer, refused_before_training, small_module


class _Tied(nn.Module):
    """Two hidden Linear layers that share one weight tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.b.weight = self.a.weight
        self.c = nn.Linear(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_a_shared_weight_is_ranked_and_counted_once(digits, tmp_path) -> None:
    module = ClassificationModule(_Tied(), input_size=8, lr=0.05)
    pruning = GradualPruning(0.6, mode="unstructured", end_epoch=1)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    trainer.fit(module, datamodule=digits)
    net = module.model
    distinct = [net.a.weight, net.c.weight]  # b shares a's tensor
    zeros = sum(int((w == 0).sum()) for w in distinct) / sum(w.numel() for w in distinct)
    assert zeros == pytest.approx(0.6, abs=1e-3)  # measured over distinct tensors
    logged = pruning.metrics["compress/weight_sparsity"]
    assert logged == pytest.approx(zeros)  # logged = measured = target
    assert weight_owners({"a": net.a, "b": net.b, "c": net.c}) == {"a": "a", "b": "a", "c": "c"}
    assert weight_sparsity({"a": net.a, "b": net.b}) == weight_sparsity({"a": net.a})


@pytest.mark.bad_input("data")
@pytest.mark.parametrize(
    "callback",
    [
        GradualPruning(0.8, mode="unstructured", end_epoch=1),
        GradualPruning(0.5, mode="structured", end_epoch=1),
        QuantizationAware(start_epoch=0),
    ],
    ids=["unstructured", "structured", "qat"],
)
def test_a_layer_torch_prune_reparametrized_is_refused_before_training(
    digits, tmp_path, callback
) -> None:
    module = small_module()
    prune.l1_unstructured(module.model[4], "weight", amount=0.3)
    before = copy.deepcopy(module.state_dict())
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[callback])
    with pytest.raises(
        ValueError,
        match=r"cannot act on layer 'model\.4': its weight is already reparametrized by "
        r"torch\.nn\.utils\.prune.*prune\.remove\(module, 'weight'\).*ignore=\['model\.4'\]",
    ):
        trainer.fit(module, datamodule=digits)
    assert module.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_the_refused_layer_can_be_left_out_with_ignore(digits, tmp_path) -> None:
    module = small_module()
    prune.l1_unstructured(module.model[4], "weight", amount=0.3)
    pruning = GradualPruning(0.8, mode="unstructured", end_epoch=1, ignore=["model.4"])
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning]).fit(module, datamodule=digits)
    assert pruning.metrics["compress/weight_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert hasattr(module.model[4], "weight_orig")  # the user's reparametrization is untouched


class _Gated(nn.Module):
    """conv(1→16) → conv(16→32)+BN+ReLU → x·sigmoid(conv1x1(32→1)(x)) → conv(32→16) → head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.conv = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.gate = nn.Conv2d(32, 1, 1)
        self.out = nn.Conv2d(32, 16, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.relu(self.stem(x)))
        x = x * torch.sigmoid(self.gate(x))
        return self.head(torch.relu(self.out(x)))


def test_gate_keeps_reported_sparsity_honest(digits, tmp_path) -> None:
    from lightning_accel.pruning.channels import out_channels

    module = ClassificationModule(_Gated(), input_size=8, lr=0.05)
    pruning = GradualPruning(0.5, mode="structured", end_epoch=1)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    with pytest.warns(UserWarning, match=r"cannot reach the planned width") as caught:
        trainer.fit(module, datamodule=digits)
    widths = {n: out_channels(module.get_submodule(n)) for n in pruning._initial_widths}
    initial = pruning._initial_widths
    measured = 1 - sum(widths.values()) / sum(initial.values())
    assert pruning.metrics["compress/sparsity"] == pytest.approx(measured)
    assert pruning.measured_sparsity(module) == pytest.approx(measured)
    message = next(str(w.message) for w in caught if "planned width" in str(w.message))
    short = [n for n in initial if widths[n] > max(1, round(initial[n] * 0.5))]
    assert short and all(name in message for name in short)
    assert measured < 0.5  # the gate holds a layer back: the honest figure is below the target


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.attention = nn.MultiheadAttention(embed_dim=32, num_heads=4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).unsqueeze(1)
        mixed, _ = self.attention(tokens, tokens, tokens)
        return self.head(mixed.squeeze(1))


@pytest.mark.bad_input("data")
def test_attention_that_pruning_would_break_is_refused_before_training(digits, tmp_path) -> None:
    module = ClassificationModule(_Attention(), input_size=8, lr=0.05)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[GradualPruning(0.3, end_epoch=1)])
    with refused_before_training(
        trainer,
        module,
        r"would break ClassificationModule: .*`embed_dim` must divide evenly by "
        r"`num_heads`.*round_to=.*The model was not changed",
    ):
        trainer.fit(module, datamodule=digits)


def test_attention_widths_kept_a_multiple_of_the_heads_prune_and_run(digits, tmp_path) -> None:
    module = ClassificationModule(_Attention(), input_size=8, lr=0.05)
    pruning = GradualPruning(0.3, end_epoch=1, round_to=4)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning]).fit(module, datamodule=digits)
    attention = module.model.attention
    assert attention.embed_dim < 32 and attention.embed_dim % attention.num_heads == 0
    assert module.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def _with_weight_norm(layer: str, kind: str) -> ClassificationModule:
    """small_cnn with one layer reparametrized by a hook-based (pre-parametrize) torch utility."""
    module = small_module()
    target = module.get_submodule(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm is deprecated, and still in use
        getattr(nn.utils, kind)(target)
    return module


@pytest.mark.bad_input("data")
@pytest.mark.parametrize(
    ("kind", "source"), [("weight_norm", "weight_g, weight_v"), ("spectral_norm", "weight_orig")]
)
@pytest.mark.parametrize(
    "callback",
    [GradualPruning(0.5, mode="unstructured", end_epoch=1), QuantizationAware(start_epoch=0)],
    ids=["unstructured", "qat"],
)
def test_a_weight_a_hook_recomputes_is_refused_before_training(
    digits, tmp_path, kind, source, callback
) -> None:
    # The hook recomputes `weight` at every forward: masks were undone silently (measured 0
    # zeros in the layer) and QAT failed with a raw TypeError.
    module = _with_weight_norm("model.4", kind)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[callback])
    fold = f"torch.nn.utils.remove_{kind}(module)"
    with refused_before_training(
        trainer,
        module,
        rf"cannot act on layer 'model\.4': its weight is already reparametrized by a forward "
        rf"pre-hook .* from {source}\. .*{re.escape(fold)}.*ignore=\['model\.4'\]",
    ):
        trainer.fit(module, datamodule=digits)


@pytest.mark.bad_input("data")
def test_a_coupled_reparametrized_classifier_is_named_before_structured_pruning(
    digits, tmp_path
) -> None:
    # The classifier is never pruned, but its input features are: torch-pruning slices the
    # derived weight, not weight_g/weight_v (the copy failed with a TypeError naming no layer).
    module = small_module()
    classifier = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)][-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn.utils.weight_norm(module.get_submodule(classifier))
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[GradualPruning(0.5, end_epoch=1)])
    with refused_before_training(
        trainer,
        module,
        rf"layer '{re.escape(classifier)}' has its channels coupled to pruned layers, but its "
        r"weight is reparametrized by a forward pre-hook \(WeightNorm\).*"
        r"torch\.nn\.utils\.remove_weight_norm\(module\)",
    ):
        trainer.fit(module, datamodule=digits)


@pytest.mark.bad_input("data")
def test_a_parametrized_layer_is_named_with_its_fold_for_structured_pruning() -> None:
    from lightning_accel.pruning.channels import check_structured_support

    module = small_module()
    nn.utils.parametrizations.weight_norm(module.model[16])
    # Was: "cannot handle layer 'model.16.parametrizations.weight' (ParametrizationList): its
    # raw nn.Parameter 'original1' ... build the layer from standard modules".
    with pytest.raises(
        ValueError,
        match=r"cannot handle layer 'model\.16': its weight is reparametrized by "
        r"torch\.nn\.utils\.parametrize.*remove_parametrizations\(module, 'weight'",
    ):
        check_structured_support(module, ["model.4", "model.8"])


def test_channels_a_group_norm_rounds_down_are_pruned_not_refused(digits, tmp_path) -> None:
    from lightning_accel.pruning.channels import out_channels

    # torch-pruning removes GroupNorm channels evenly per group: 30% of 32 plans 22, which 8
    # groups round down to 16. It was refused ("cut to 16 channels, below its planned 22").
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.GroupNorm(8, 32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    module = ClassificationModule(net, input_size=8, lr=0.05)
    pruning = GradualPruning(0.3, end_epoch=1)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning]).fit(module, datamodule=digits)
    assert (out_channels(net[2]), net[3].num_channels, net[3].num_groups) == (16, 16, 8)
    measured = 1 - (16 + out_channels(net[5])) / 64
    assert pruning.metrics["compress/sparsity"] == pytest.approx(measured)
    assert module.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


class _LogitsAndFeatures(nn.Module):
    """conv(1→16) → conv(16→32) → conv(32→32) → pooled features, returned with the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class _Pair(pl.LightningModule):
    """Trains on the logits; its forward returns (logits, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _LogitsAndFeatures()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return nn.functional.cross_entropy(self(batch[0])[0], batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.bad_input("data")
def test_a_second_output_pruning_would_narrow_is_refused_naming_its_layer(digits, tmp_path) -> None:
    # The features output's width comes from body.4, not from the last layer called (head).
    module = _Pair()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[GradualPruning(0.5, end_epoch=1)])
    with refused_before_training(
        trainer,
        module,
        r"output shapes from \[\(1, 10\), \(1, 32\)\] to \[\(1, 10\), \(1, 16\)\] \(cut by "
        r"layer\(s\) 'model\.body\.4'\)\. .* out with ignore=\['model\.body\.4'\]",
    ):
        trainer.fit(module, digits.train_dataloader())
    pruning = GradualPruning(0.5, end_epoch=1, ignore=["model.body.4"])  # the fix it names
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    trainer.fit(module, digits.train_dataloader())
    logits, features = module.model(torch.zeros(2, 1, 8, 8))
    assert logits.shape == (2, 10) and features.shape == (2, 32)
    assert module.model.body[2].out_channels == 16


class _CrossAttention(nn.Module):
    """Image rows as tokens; the keys and values are narrower than the queries (kdim/vdim)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.query = nn.Linear(16, 32)
        self.memory = nn.Linear(16, 16)
        self.attention = nn.MultiheadAttention(32, 4, kdim=16, vdim=16, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.relu(self.stem(x.squeeze(1)))
        memory = torch.relu(self.memory(rows))
        mixed, _ = self.attention(self.query(rows), memory, memory)
        return self.head(mixed.mean(1))


@pytest.mark.bad_input("data")
def test_attention_with_its_own_kdim_is_refused_naming_the_layers_feeding_it(
    digits, tmp_path
) -> None:
    # Was: "pruning a copy to the target fails (AssertionError: expecting query weights shape of
    # (24, 24), but got torch.Size([24, 32]))", suggesting a round_to that does not help.
    module = ClassificationModule(_CrossAttention(), input_size=8, lr=0.05)
    pruning = GradualPruning(0.5, end_epoch=1, keep_first_and_last=False)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    with refused_before_training(
        trainer,
        module,
        r"nn\.MultiheadAttention 'model\.attention' has kdim/vdim of its own \(16/16, embed_dim "
        r"32\).*ignore=\[\.\.\.\] \(the pruned layers of its widths: \['model\.stem', "
        r"'model\.query', 'model\.memory'\]\)",
    ):
        trainer.fit(module, datamodule=digits)
    fixed = ["model.query", "model.memory"]
    pruning = GradualPruning(0.5, end_epoch=1, keep_first_and_last=False, ignore=fixed)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning]).fit(module, datamodule=digits)
    assert module.model.stem.out_features == 8 and module.model.attention.embed_dim == 32
    assert module.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_ignore_takes_an_attention_block_and_keeps_its_width(digits, tmp_path) -> None:
    # ignore= matched conv/linear layers only: "pattern 'model.attention' matches no layer".
    module = ClassificationModule(_Attention(), input_size=8, lr=0.05)
    pruning = GradualPruning(
        0.5, end_epoch=1, ignore=["model.attention"], keep_first_and_last=False
    )
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    with pytest.warns(UserWarning, match=r"model\.embed\.3: 32 of planned 16 channels"):
        trainer.fit(module, datamodule=digits)
    net = module.model
    assert (net.attention.embed_dim, net.embed[3].out_features, net.embed[1].out_features) == (
        32,
        32,
        32,
    )
    assert pruning.metrics["compress/sparsity"] == pytest.approx(1 - (32 + 32) / (64 + 32))
    assert module.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


class _LayerScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


@pytest.mark.bad_input("data")
def test_ignoring_a_module_with_raw_parameters_names_what_to_ignore_instead(
    digits, tmp_path
) -> None:
    # torch-pruning skips an ignored raw parameter but still cuts the channels it scales: the
    # copy failed with "The size of tensor a (16) must match the size of tensor b (32)".
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.Conv2d(16, 32, 3, padding=1),
        _LayerScale(32),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    module = ClassificationModule(net, input_size=8, lr=0.05)
    pruning = GradualPruning(0.5, end_epoch=1, ignore=["model.2"])
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    with refused_before_training(
        trainer,
        module,
        r"ignore=\['model\.2'\] names a module holding raw per-channel parameters \(gamma\).*"
        r"ignore those layers instead",
    ):
        trainer.fit(module, datamodule=digits)


def test_latency_budget_groups_leave_an_ignored_attention_block_whole() -> None:
    # LatencyBudgetPruning built its channel groups from conv/linear layers only: with
    # ignore=['model.attention'] it skipped the projections inside the attention but still
    # offered the group that narrows the attention's embedding (helper report, this stop).
    from lightning_accel.pruning.latency_model import channel_groups
    from lightning_accel.utilities.layer_selection import protected_modules, select_layers

    module = ClassificationModule(_Attention(), input_size=8, lr=0.05)
    example = torch.zeros(2, 1, 8, 8)
    protect = protected_modules(module, ["model.attention"], "LatencyBudgetPruning")
    assert protect == ["model.attention"]
    layers = select_layers(module, example, ["model.attention"], True, "LatencyBudgetPruning")
    assert layers == ["model.embed.3"]  # first and last kept; the attention's own ignored

    def groups(protected: list[str]) -> set[str]:
        return {g.name for g in channel_groups(module, example, layers, 8, protect=protected)}

    assert groups([]) == {"model.embed.3"}  # it narrows the attention's embedding
    assert groups(protect) == set()  # protected: nothing may go (the callback then refuses)
