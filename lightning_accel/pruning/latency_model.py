"""A latency model of a network on its target runtime, measured one channel group at a time.

Each prunable group (a torch-pruning dependency group: the output channels of a conv or
linear layer together with every layer they are coupled to) is thinned *alone*, on a copy, to a
few widths (multiples of ``round_to``); every copy is exported to ONNX, compiled by the
target backend (the registry of :mod:`lightning_accel.backends`) and timed **as a whole
model**, in rounds alternating with the unthinned model. A group's saving at a width is the
drop in whole-model median latency; between measured widths it is interpolated linearly.

Why whole-model timings rather than the runtime's per-layer profile (ONNX Runtime's profiler,
OpenVINO's performance counts): a runtime fuses and re-lays out the graph (Conv+BN+ReLU
fusion, NCHWc reorders, kernel choice by shape), so the time a channel costs shows up in nodes
that belong to no single layer, and per-node timers add their own overhead to sub-millisecond
kernels. Whole-model timings measure exactly what the budget is about, on every backend
alike, and need nothing from the runtime but "run this graph".

The prediction for several groups thinned at once assumes the savings **add up**
(``latency = base - sum of per-group savings``), as NetAdapt (Yang et al., 2018) and HALP
(Shen et al., 2022) do with their lookup tables. Groups share memory bandwidth and fused
kernels, so the sum is off by some percent; :func:`additivity_error` measures it and the
pruning callback corrects the next step with the error it measured on the real model.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_accel.backends import CompiledModel, compile_model
from lightning_accel.backends.timing import Latency, default_threads, summarize_times, time_calls
from lightning_accel.pruning.channels import (
    PruningHistory,
    attention_modules,
    out_channels,
    per_channel_parameters,
)
from lightning_accel.utilities.copying import detached_copy
from lightning_accel.utilities.layer_selection import WEIGHTED_LAYERS
from lightning_accel.utilities.modules import eval_mode


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable torch-pruning dependency group.

    Attributes:
        name: The root layer's name (the key used everywhere for this group).
        layers: Conv/linear layers whose *output* channels are in the group (same width).
        width: Current number of channels.
    """

    name: str
    layers: tuple[str, ...]
    width: int


def dependency_graph(model: nn.Module, example: Tensor) -> Any:
    """torch-pruning's ``DependencyGraph`` of ``model``, traced in eval mode on ``example``."""
    import torch_pruning as tp

    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(
            model,
            example,
            unwrapped_parameters=list(per_channel_parameters(model).items()),
            verbose=False,
        )


def _groups(
    model: nn.Module, graph: Any, prunable: Sequence[str], protect: Sequence[str] = ()
) -> dict[str, Any]:
    """torch-pruning groups whose output-channel layers all lie in ``prunable``, by root name.

    Groups that would narrow a module of ``protect`` (an attention block, a norm, a block the
    user's ``ignore`` names) are left out.
    """
    keep = set(prunable) - set(attention_modules(model))  # heads are out of scope here
    names = {module: name for name, module in model.named_modules()}
    ignored = [
        m for n, m in model.named_modules() if isinstance(m, WEIGHTED_LAYERS) and n not in keep
    ] + [model.get_submodule(n) for n in protect]
    found = {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=WEIGHTED_LAYERS):
        root = group[0].dep.target.module
        if root in names and names[root] in keep:
            found[names[root]] = group
    return found


def channel_groups(
    model: nn.Module,
    example: Tensor,
    prunable: Sequence[str],
    round_to: int,
    graph: Any = None,
    protect: Sequence[str] = (),
) -> list[ChannelGroup]:
    """The groups of ``model`` that can lose at least ``round_to`` channels.

    A group is prunable when every layer whose output channels it holds is in ``prunable`` and
    it is wider than ``round_to`` (its last ``round_to`` channels are never cut).

    Args:
        model: Root module; names are relative to it.
        example: One input batch, for tracing.
        prunable: Conv/linear layers whose output channels may go.
        round_to: Channel multiple; the smallest width a group keeps.
        graph: A dependency graph of ``model`` already built, or ``None``.
        protect: Other modules whose width stays (see :func:`_groups`).
    """
    graph = graph if graph is not None else dependency_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    result = []
    for name, group in _groups(model, graph, prunable, protect).items():
        layers = tuple(
            names[dep.target.module]
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, WEIGHTED_LAYERS)
        )
        width = out_channels(model.get_submodule(name))
        if width > round_to:
            result.append(ChannelGroup(name, tuple(dict.fromkeys(layers)), width))
    return result


def group_scores(
    model: nn.Module,
    graph: Any,
    prunable: Sequence[str],
    names: Sequence[str],
    criterion: Any,
    protect: Sequence[str] = (),
) -> dict[str, Tensor]:
    """Per-channel importance of each named group, from the criterion registry.

    Args:
        model: The model ``graph`` was built on.
        graph: Its dependency graph.
        prunable: The layers whose output channels may go (as for :func:`channel_groups`).
        names: Root names of the groups to score.
        criterion: A name of :data:`lightning_accel.pruning.criteria.CRITERIA` or a callable.
        protect: Other modules whose width stays (see :func:`_groups`).

    Returns:
        ``{root name: scores}``, one non-negative score per channel (torch-pruning's, which
        averages over the group's layers and normalizes by the group mean).
    """
    from lightning_accel.pruning.criteria import group_importance

    importance = group_importance(criterion)
    groups = _groups(model, graph, prunable, protect)
    scores = {}
    for name in names:
        width = out_channels(model.get_submodule(name))
        imp = importance(groups[name])
        if imp is None:  # torch-pruning found no weight to score: every channel alike
            imp = torch.ones(width)
        scores[name] = torch.nan_to_num(imp.detach().float().cpu(), nan=0.0).clamp_min(0.0)
    return scores


def prune_groups(
    model: nn.Module, graph: Any, removals: Mapping[str, Sequence[int]]
) -> PruningHistory:
    """Remove the given output channels of each named group, through torch-pruning.

    Args:
        model: The model ``graph`` was built on; changed in place.
        graph: Its dependency graph.
        removals: ``{root layer name: channel indices to remove}``.

    Returns:
        The pruning history (``[[layer, is_out, indices], ...]``), which
        :func:`lightning_accel.pruning.channels.replay_channel_pruning` replays.
    """
    modules = dict(model.named_modules())
    start = len(graph.pruning_history())
    for name, idxs in removals.items():
        if not idxs:
            continue
        root = modules[name]
        handler = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, handler, sorted(int(i) for i in idxs)).prune()
    return [
        [str(n), bool(o), [int(i) for i in idx]] for n, o, idx in graph.pruning_history()[start:]
    ]


def thinned_copy(model: nn.Module, example: Tensor, widths: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with the named groups cut to ``widths`` (the last channels go).

    Args:
        model: The model; not changed.
        example: One input batch, for tracing.
        widths: ``{group root name: new width}``.
    """
    copy = detached_copy(model).cpu()
    graph = dependency_graph(copy, example.cpu())
    current = {n: out_channels(copy.get_submodule(n)) for n in widths}
    prune_groups(copy, graph, {n: list(range(w, current[n])) for n, w in widths.items()})
    return copy


# ----------------------------------------------------------------------------------- timing
def export_for_timing(model: nn.Module, example: Tensor, path: Path) -> Path:
    """Export a probe for timing: TorchScript exporter (about 50x faster), else ``to_onnx``.

    Probes are only timed, never shipped; the model itself is always measured through
    :func:`lightning_accel.export.onnx.to_onnx`.

    Args:
        model: The model to export; not changed.
        example: One input batch (the batch dimension is exported dynamic).
        path: The ``.onnx`` file to write.
    """
    exportable = detached_copy(model).cpu().eval()
    sample = example.detach().cpu()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                exportable,
                (sample,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=17,
            )
        return path
    except Exception:  # noqa: BLE001 - any failure: fall back to the library's exporter
        from lightning_accel.export.onnx import to_onnx

        return to_onnx(model, example, path)


def random_inputs(example: Tensor, batch_size: int) -> np.ndarray:
    """Seeded standard-normal inputs of ``example``'s shape at ``batch_size`` (float32)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch_size, *example.shape[1:])).astype(np.float32)


def time_rounds(
    models: Sequence[CompiledModel], inputs: np.ndarray, rounds: int = 5, round_s: float = 0.05
) -> list[list[list[float]]]:
    """Time compiled models in alternating rounds, so CPU contention hits them alike.

    Each round runs every model for about ``round_s`` seconds (the order rotates each round).

    Args:
        models: Compiled models taking ``inputs``.
        inputs: One batch (batch first).
        rounds: Rounds (at least 1).
        round_s: Seconds per model per round.

    Returns:
        ``times[model][round]``: the run times in milliseconds.
    """
    calls = [functools.partial(model.run, inputs) for model in models]
    per_call = []
    for call in calls:  # warm-up, and a first estimate of the time per call
        per_call.append(float(np.median(np.asarray(time_calls(call, 2, 3)))))
    runs = [max(3, min(500, int(round_s * 1000.0 / max(t, 1e-3)))) for t in per_call]
    times: list[list[list[float]]] = [[] for _ in models]
    for r in range(max(1, rounds)):
        order = list(range(len(models)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            times[i].append(time_calls(calls[i], 1, runs[i]))
    return times


def time_alternating(
    models: Sequence[CompiledModel], inputs: np.ndarray, rounds: int = 5, round_s: float = 0.05
) -> list[Latency]:
    """:func:`time_rounds`, each model's runs of all rounds summarized together.

    Args:
        models: Compiled models taking ``inputs``.
        inputs: One batch (batch first).
        rounds: Rounds (at least 1).
        round_s: Seconds per model per round.

    Returns:
        One :class:`Latency` per model (median, p90, IQR in milliseconds).
    """
    batch = int(inputs.shape[0])
    threads = int(getattr(models[0], "threads", None) or default_threads()) if models else 0
    return [
        summarize_times([t for run in model for t in run], batch, threads)
        for model in time_rounds(models, inputs, rounds, round_s)
    ]


def round_ratio(
    numerator: Sequence[Sequence[float]], denominator: Sequence[Sequence[float]]
) -> tuple[float, float]:
    """Median over rounds of ``median(numerator) / median(denominator)``, and its spread.

    Args:
        numerator: Run times per round of one model (e.g. the dense one).
        denominator: Run times per round of the other, timed in the same rounds.

    Returns:
        ``(ratio, spread)``: the median per-round ratio and half the interquartile range of
        the per-round ratios relative to it (0 with one round).
    """
    ratios = [
        float(np.median(a) / np.median(b)) for a, b in zip(numerator, denominator, strict=True)
    ]
    p25, median, p75 = np.percentile(ratios, [25, 50, 75])
    return float(median), float((p75 - p25) / 2.0 / median)


@dataclass
class Probe:
    """Compiles probes into one temporary folder, for one backend, batch size and thread count."""

    backend: str
    example: Tensor
    batch_size: int = 1
    threads: int | None = None
    rounds: int = 5
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="latency-model-")))
    _count: int = 0

    def compile(self, model: nn.Module, exact: bool = False) -> CompiledModel:
        """Export ``model`` (``exact``: with ``to_onnx``, as shipped) and compile it."""
        return self.session(self.export(model, exact))

    def export(self, model: nn.Module, exact: bool = False) -> Path:
        """Export ``model`` to a new ONNX file in the folder (``exact``: with ``to_onnx``)."""
        from lightning_accel.export.onnx import to_onnx

        path = self._new_folder() / "model.onnx"
        if exact:
            to_onnx(model, self.example, path)
        else:
            export_for_timing(model, self.example, path)
        return path

    def session(self, path: Path) -> CompiledModel:
        """A new runtime session of an exported file (its artifacts in a folder of their own).

        Two sessions of one file can time several percent apart (memory placement, thread
        start-up); compile more than one to see that part of the spread.
        """
        return compile_model(self.backend, path, self._new_folder(), threads=self.threads)

    def _new_folder(self) -> Path:
        self._count += 1
        out = self.folder / f"m{self._count}"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def time(self, models: Sequence[CompiledModel]) -> list[Latency]:
        """Alternating-round latencies of ``models`` at this probe's batch size."""
        return time_alternating(models, random_inputs(self.example, self.batch_size), self.rounds)

    def time_rounds(self, models: Sequence[CompiledModel]) -> list[list[list[float]]]:
        """Alternating-round run times ``[model][round]`` at this probe's batch size."""
        return time_rounds(models, random_inputs(self.example, self.batch_size), self.rounds)

    def close(self) -> None:
        """Delete the probes' files."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


# ----------------------------------------------------------------------------------- model
@dataclass
class GroupCurve:
    """Measured whole-model savings of one group at a few widths.

    Attributes:
        widths: Widths measured, descending; the first is the current width.
        savings_ms: Milliseconds saved at each width (0 at the current width), made
            non-decreasing as the width falls (a narrower group is never slower, so a rise is
            timing noise).
    """

    widths: list[int]
    savings_ms: list[float]

    def saving(self, width: int) -> float:
        """Milliseconds saved at ``width``, interpolated linearly between measured widths."""
        xs = self.widths[::-1]
        ys = self.savings_ms[::-1]
        return float(np.interp(width, xs, ys))


@dataclass
class LatencyModel:
    """Predicts the latency of width assignments from per-group measured savings.

    Attributes:
        backend: Backend the timings come from.
        batch_size: Batch size timed.
        base_ms: Measured median latency of the model as profiled (the probes' exporter).
        base_iqr_ms: Its interquartile range.
        curves: Per group root name, its measured savings.
        widths: The group widths at profiling time.
    """

    backend: str
    batch_size: int
    base_ms: float
    base_iqr_ms: float
    curves: dict[str, GroupCurve]
    widths: dict[str, int]

    def saving(self, name: str, width: int) -> float:
        """Predicted milliseconds saved by bringing group ``name`` to ``width``."""
        return self.curves[name].saving(width)

    def predict(self, widths: Mapping[str, int], anchor_ms: float | None = None) -> float:
        """Predicted latency (ms) with the given group widths (others unchanged).

        Additive: ``base - sum of savings``. With ``anchor_ms`` (the model's latency as shipped
        and measured) the savings are taken as fractions of ``base_ms`` and applied to it.
        """
        saved = sum(self.saving(n, w) for n, w in widths.items() if n in self.curves)
        if anchor_ms is None:
            return self.base_ms - saved
        return anchor_ms * (1.0 - saved / self.base_ms)

    def minimum(self, round_to: int) -> dict[str, int]:
        """The smallest widths allowed: ``round_to`` channels per group."""
        return {name: round_to for name in self.curves}


def probe_widths(width: int, round_to: int, count: int = 3) -> list[int]:
    """``count`` widths below ``width``, evenly spaced down to ``round_to``, multiples of it.

    Args:
        width: The group's current width.
        round_to: Channel multiple, and the smallest width.
        count: How many widths at most.

    Example:
        >>> probe_widths(64, 8)
        [40, 24, 8]
    """
    found: list[int] = []
    for k in range(1, count + 1):
        w = width - k * (width - round_to) / count
        w = max(round_to, int(w // round_to) * round_to)
        if w < width and w not in found:
            found.append(w)
    return found


def build_latency_model(
    model: nn.Module,
    example: Tensor,
    groups: Sequence[ChannelGroup],
    probe: Probe,
    round_to: int,
    widths_per_group: int = 3,
) -> LatencyModel:
    """Measure each group's savings at ``widths_per_group`` widths, one group at a time.

    Args:
        model: The model as it is now (not changed).
        example: One input batch on the model's device.
        groups: The prunable groups (:func:`channel_groups`).
        probe: Backend, batch size, threads and timing rounds.
        round_to: Channel multiple of every probe width.
        widths_per_group: Widths measured per group (besides the current one).

    Returns:
        The fitted :class:`LatencyModel`.

    Cost: ``len(groups) * widths_per_group`` exports and compilations, timed in alternating
    rounds of ``probe.rounds``; a few seconds for a small CNN at batch 1.
    """
    base = probe.compile(model)
    fractions: dict[str, list[float]] = {}
    base_runs: list[float] = []
    for group in groups:
        widths = probe_widths(group.width, round_to, widths_per_group)
        compiled = [probe.compile(thinned_copy(model, example, {group.name: w})) for w in widths]
        runs = probe.time_rounds([base, *compiled])
        base_runs += [t for r in runs[0] for t in r]
        # Paired per round: the fraction of the base latency saved, robust to the load
        # changing between groups (and between rounds).
        saved = [0.0]
        for probe_runs in runs[1:]:
            speedup, _ = round_ratio(runs[0], probe_runs)
            saved.append(max(saved[-1], 1.0 - 1.0 / speedup))
        fractions[group.name] = saved
    base_ms = float(np.median(np.asarray(base_runs))) if base_runs else 0.0
    p25, p75 = np.percentile(np.asarray(base_runs), [25, 75]) if base_runs else (0.0, 0.0)
    curves = {
        g.name: GroupCurve(
            [g.width, *probe_widths(g.width, round_to, widths_per_group)],
            [f * base_ms for f in fractions[g.name]],
        )
        for g in groups
    }
    return LatencyModel(
        probe.backend,
        probe.batch_size,
        base_ms,
        float(p75 - p25),
        curves,
        {g.name: g.width for g in groups},
    )


def additivity_error(
    model: nn.Module,
    example: Tensor,
    latency_model: LatencyModel,
    widths: Mapping[str, int],
    probe: Probe,
) -> tuple[float, float]:
    """Measure a width assignment and return ``(predicted_ms, measured_ms)``.

    Both are in the probes' frame: the model and the thinned copy are timed in alternating
    rounds, and the prediction is anchored at the model's latency measured in those rounds.

    Args:
        model: The model the latency model was measured on; not changed.
        example: One input batch.
        latency_model: Its :class:`LatencyModel`.
        widths: ``{group root name: width}`` to predict and measure.
        probe: Backend, batch size, threads and rounds.
    """
    base = probe.compile(model)
    thinned = probe.compile(thinned_copy(model, example, widths))
    base_t, thinned_t = probe.time([base, thinned])
    return latency_model.predict(widths, anchor_ms=base_t.median_ms), thinned_t.median_ms
