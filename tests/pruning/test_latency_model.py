"""The latency model: channel groups, probes and predictions against measured latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_accel.pruning.channels import replay_channel_pruning
from lightning_accel.pruning.latency_model import (
    Probe,
    additivity_error,
    build_latency_model,
    channel_groups,
    dependency_graph,
    probe_widths,
    prune_groups,
)


def cnn3(width: int = 64) -> nn.Sequential:
    """Three conv-BN-ReLU layers and a classifier: at 32x32, batch 1, about 1 ms on 1 thread."""
    layers: list[nn.Module] = []
    for c_in in (1, width, width):
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.b(torch.relu(self.a(x)))
        return self.head(x.mean((2, 3)))


def test_probe_widths_are_multiples_of_round_to_down_to_round_to() -> None:
    assert probe_widths(64, 8) == [40, 24, 8]
    assert probe_widths(16, 8) == [8]
    assert all(w % 16 == 0 for w in probe_widths(100, 16, 4))


def test_groups_follow_torch_pruning_couplings() -> None:
    model, x = Residual(), torch.zeros(1, 1, 8, 8)
    groups = {g.name: g for g in channel_groups(model, x, ["stem", "a", "b"], round_to=4)}
    # the residual add couples stem and b: one group; a is its own
    assert len(groups) == 2
    coupled = next(g for g in groups.values() if "b" in g.layers)
    assert set(coupled.layers) == {"stem", "b"} and coupled.width == 16
    # with the stem kept, the residual group cannot be cut at all
    assert [g.name for g in channel_groups(model, x, ["a", "b"], round_to=4)] == ["a"]
    # a group no wider than round_to has nothing to give
    assert channel_groups(model, x, ["stem", "a", "b"], round_to=16) == []


def test_pruned_groups_replay_from_their_history() -> None:
    model, x = cnn3(32).eval(), torch.randn(2, 1, 16, 16)
    fresh = cnn3(32).eval()
    fresh.load_state_dict(model.state_dict())
    graph = dependency_graph(model, x[:1])
    history = prune_groups(model, graph, {"3": [0, 5, 7], "6": list(range(8))})
    assert model[3].out_channels == 29 and model[6].out_channels == 24
    replay_channel_pruning(fresh, x[:1], history)
    assert torch.equal(fresh(x), model(x))


def test_latency_model_predicts_measured_latency() -> None:
    torch.manual_seed(0)
    model, x = cnn3().eval(), torch.zeros(1, 1, 32, 32)
    groups = channel_groups(model, x, ["3", "6"], round_to=8)
    probe = Probe("onnxruntime", x, batch_size=1, threads=1, rounds=5)
    try:
        latency = build_latency_model(model, x, groups, probe, round_to=8)
        for curve in latency.curves.values():
            assert curve.widths == [64, 40, 24, 8]
            assert curve.savings_ms[0] == 0.0
            assert curve.savings_ms == sorted(curve.savings_ms)  # narrower is never slower
        # thinning the conv that feeds the 3x3 conv of the last block saves real time
        assert latency.saving("3", 8) > 0.2 * latency.base_ms
        # Additive prediction vs measurement for moderate cuts of both groups: within 35%
        # (measured here: 5-16% off; see docs/latency_budget.md), and both well below dense.
        predicted, measured = additivity_error(model, x, latency, {"3": 32, "6": 40}, probe)
        assert measured < 0.85 * latency.base_ms
        assert abs(predicted - measured) / measured < 0.35
    finally:
        probe.close()
    assert not probe.folder.exists()


def test_interpolation_between_measured_widths() -> None:
    from lightning_accel.pruning.latency_model import GroupCurve

    curve = GroupCurve([64, 40, 24, 8], [0.0, 0.3, 0.5, 0.9])
    assert curve.saving(64) == 0.0 and curve.saving(8) == 0.9
    assert curve.saving(32) == pytest.approx(0.4)
    assert curve.saving(56) == pytest.approx(0.1)
