"""Choose which channel groups lose how many channels to reach a latency.

Greedy allocation in the spirit of NetAdapt (Yang et al., 2018, "NetAdapt: Platform-Aware
Neural Network Adaptation for Mobile Applications": per-layer measured latency tables, cut
where the accuracy cost per millisecond is lowest) and HALP (Shen et al., 2022, "Structural
Pruning via Latency-Saliency Knapsack": importance over latency cost, a knapsack over
groups). Starting from the current widths, the allocator repeatedly takes the one cut of
``round_to`` channels, over all groups, that loses the **least importance per millisecond
saved**, until the predicted latency reaches the target. The channels cut within a group are
always its least important ones; no group ever loses its last ``round_to`` channels.

Importance lost is measured as ``weight * log(kept before / kept after)``, where "kept" is the
summed score of a group's remaining channels: the objective is the product of the fractions of
importance each group keeps. Magnitude scores are not calibrated across layers, and with a
plain sum of removed scores the greedy drove whole groups to ``round_to`` channels (measured:
residual streams or every inner conv of ResNet-18 cut to 8-16 channels, with accuracy far
below uniform pruning); the logarithm makes the last channels of a group ever dearer and is
free of each group's score scale. ``weight`` is the number of layers whose outputs the group
holds (HALP sums saliency over a group's layers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# ms saved by bringing a group (by name) from its current width to a given width.
Savings = Callable[[str, int], float]


@dataclass(frozen=True)
class Allocation:
    """The allocator's plan.

    Attributes:
        widths: New width of every group considered, by root name.
        removals: Channel indices (of the current channels) to remove, per group.
        predicted_ms: Latency predicted with these widths.
        importance_lost: Summed importance of the channels removed.
        reached: Whether ``predicted_ms <= target_ms``; ``False``: every group is at its
            minimum (or no cut is predicted to save time) and the target is out of reach.
    """

    widths: dict[str, int]
    removals: dict[str, list[int]]
    predicted_ms: float
    importance_lost: float
    reached: bool


def next_width(width: int, round_to: int) -> int:
    """The next multiple of ``round_to`` strictly below ``width`` (may be below ``round_to``)."""
    return width - (width % round_to or round_to)


def allocate(
    scores: Mapping[str, Tensor],
    savings: Savings,
    current_ms: float,
    target_ms: float,
    round_to: int,
    scale: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> Allocation:
    """Greedy least-importance-per-millisecond allocation of channel cuts.

    Args:
        scores: Per group root name, one importance score per current channel (higher keeps).
        savings: ``savings(name, width)``: predicted ms saved by bringing ``name`` from its
            current width (``len(scores[name])``) to ``width``; 0 at the current width.
        current_ms: Latency of the model now, in milliseconds.
        target_ms: Latency to reach, in milliseconds.
        round_to: Cuts come in multiples of this; every group keeps at least this many
            channels, and new widths are multiples of it.
        scale: Correction applied to every predicted saving (measured / predicted drop of the
            previous step; 1.0: trust the model).
        weights: Per group, the weight of its importance loss (default 1): the number of
            layers whose output channels it holds.

    Returns:
        The :class:`Allocation`.

    Raises:
        ValueError: If ``round_to < 1`` or ``scale <= 0``.

    Example:
        >>> scores = {"a": torch.ones(16), "b": torch.ones(16) * 2}
        >>> plan = allocate(scores, lambda n, w: (16 - w) * 0.1, 3.0, 2.5, 8)
        >>> plan.widths
        {'a': 8, 'b': 16}
    """
    if round_to < 1 or not scale > 0:
        raise ValueError(f"round_to must be >= 1 and scale > 0; got {round_to}, {scale}")
    initial = {name: int(s.numel()) for name, s in scores.items()}
    order = {name: torch.argsort(s, stable=True) for name, s in scores.items()}
    ranked = {name: s[order[name]].double() for name, s in scores.items()}
    # kept[name][k]: summed score of the channels left after removing the k lowest
    kept = {
        name: (r.sum() - torch.cat([r.new_zeros(1), r.cumsum(0)])).clamp_min(0.0)
        for name, r in ranked.items()
    }
    weight = {name: float((weights or {}).get(name, 1.0)) for name in scores}
    widths = dict(initial)
    predicted = float(current_ms)
    lost = 0.0
    while predicted > target_ms:
        best: tuple[float, float, str, int, float] | None = None
        for name, width in widths.items():
            new = next_width(width, round_to)
            if new < round_to:
                continue  # the last round_to channels stay
            gain = (savings(name, new) - savings(name, width)) * scale
            if gain <= 0:
                continue
            cut = initial[name] - width, initial[name] - new
            cost = float(ranked[name][cut[0] : cut[1]].sum())
            tiny = 1e-12 * float(kept[name][0]) + 1e-30
            before, after = float(kept[name][cut[0]]) + tiny, float(kept[name][cut[1]]) + tiny
            key = weight[name] * math.log(before / after) / gain
            # least importance per ms first; on a tie, the larger saving
            if best is None or (key, -gain) < (best[0], -best[1]):
                best = (key, gain, name, new, cost)
        if best is None:
            break
        _, gain, name, new, cost = best
        widths[name] = new
        predicted -= gain
        lost += cost
    removals = {
        name: sorted(int(i) for i in order[name][: initial[name] - widths[name]].tolist())
        for name in widths
    }
    return Allocation(widths, removals, predicted, lost, predicted <= target_ms)


def schedule_target(dense_ms: float, target_ms: float, progress: float) -> float:
    """Latency to reach at ``progress`` of the schedule: from ``dense_ms`` down to ``target_ms``.

    Args:
        dense_ms: Latency before pruning.
        target_ms: The budget, reached at ``progress = 1``.
        progress: Fraction of the schedule done (the schedule's value, in [0, 1]).
    """
    p = min(max(progress, 0.0), 1.0)
    return dense_ms - p * (dense_ms - target_ms)


# Staging of one pruning step (see stage_goal): at most this many measured stages before the
# last cut to the goal.
MAX_STAGES = 6
LARGE_GAP = 0.3  # a gap above 30% of the goal is cut 40% of the way per stage
FINE_GAP = 0.05  # at the final step, a gap above 5% of the goal is cut 70% of the way


def stage_goal(current_ms: float, goal_ms: float, final: bool = False) -> float:
    """Latency to cut to in the next measured stage of a pruning step; ``goal_ms`` when none.

    Removed channels cannot return, so a step approaches its goal **from above**, each stage
    measured on the runtime and its error correcting the next (NetAdapt likewise takes many
    small, measured steps). The additive latency model errs most on large cuts (at batch 1 a
    model whose weights come to fit in cache speeds up more than its groups' savings add up
    to), so:

    - a gap above ``LARGE_GAP`` of the goal is cut 40% of the way;
    - at the final step (the budget itself), a gap above ``FINE_GAP`` of the goal is cut 70%
      of the way, so the last cut is small and so is its error against the budget. Without
      this stage, the last cut went from about 50% above the budget in one shot and ended 5%
      below it (ResNet-18, 3.50x measured for a 3.34x budget): channels cut for nothing;
    - otherwise the goal itself.

    Args:
        current_ms: The latency measured now, in ms (in the budget's frame).
        goal_ms: The step's goal, in ms.
        final: Whether the goal is the budget (the last step of the schedule).

    Returns:
        The latency to cut to next, in ms: above ``goal_ms`` while a stage is due, else
        ``goal_ms``.

    Example:
        >>> stage_goal(10.0, 5.0), stage_goal(6.0, 5.0), stage_goal(6.0, 5.0, final=True)
        (8.0, 5.0, 5.3)
    """
    gap = current_ms - goal_ms
    if gap > LARGE_GAP * goal_ms:
        return current_ms - 0.4 * gap
    if final and gap > FINE_GAP * goal_ms:
        return current_ms - 0.7 * gap
    return goal_ms


CUT_SLACK = 0.02  # a checked cut may land this far below its goal (about the timing spread)
CUT_CHECKS = 3  # planned cuts timed on a thinned copy, at most, before one is applied


def pulled_back_aim(aim_ms: float, goal_ms: float, landed_ms: float, before_ms: float) -> float:
    """The next aim after a planned cut, timed on a copy, landed below ``goal_ms`` (overshoot).

    The latency of a runtime is not smooth in the widths: a cut can cross a kernel or layout
    choice and save far more than its groups' savings add up to (measured on MobileNetV2 at
    batch 1: a stage planned to save 0.044 ms saved 0.124 ms, ending 19% below the budget).
    So a planned cut is timed on a thinned copy before it is applied (copies cost nothing to
    throw away; removed channels cannot return), and an overshoot moves the aim up by it.

    Args:
        aim_ms: The aim the plan was made for, in ms.
        goal_ms: The latency the stage should reach, in ms.
        landed_ms: The copy's latency, in the budget's frame, in ms.
        before_ms: The latency now, in ms; the aim stays below it.

    Returns:
        The new aim: ``aim_ms + (goal_ms - landed_ms)``, at most midway to ``before_ms``.

    Example:
        >>> pulled_back_aim(1.0, 1.0, 0.8, 2.0), pulled_back_aim(1.0, 1.0, 0.2, 2.0)
        (1.2, 1.5)
    """
    return min(aim_ms + (goal_ms - landed_ms), aim_ms + 0.5 * (before_ms - aim_ms))


@dataclass
class DropCorrection:
    """Measured over predicted latency drop, accumulated since the latency model was measured.

    The savings of the next stage are scaled by it. A ratio taken from each stage alone (as the
    first version did, multiplying one stage's ratio into the next) is noise when a stage is
    small: the last stages of a step cut a few percent of the latency, about as much as the
    timing spread, so one noisy reading can halve or double the next cut (with it, ResNet-18's
    budgets of 2x, 3.4x and 4x ended 3-5% faster than asked: channels cut for nothing).
    Accumulated over the stages of one latency model, the drop is large against the
    noise, and the ratio is the model's systematic error (e.g. superadditive savings at batch 1).

    Attributes:
        start_ms: Latency measured when the latency model was measured, in ms.
        predicted_drop_ms: The model's unscaled predicted drop, summed over the stages since.
        scale: The correction now (1.0: trust the model), clamped to ``bounds``.
        bounds: Smallest and largest scale.
    """

    start_ms: float
    predicted_drop_ms: float = 0.0
    scale: float = 1.0
    bounds: tuple[float, float] = (0.25, 4.0)

    def update(self, before_ms: float, predicted_ms: float, measured_ms: float) -> float:
        """Add one stage and return the new scale.

        Args:
            before_ms: Latency measured before the stage, in ms.
            predicted_ms: Latency the stage was planned to reach (with ``scale``), in ms.
            measured_ms: Latency measured after it, in ms.

        Example:
            >>> c = DropCorrection(10.0)
            >>> round(c.update(10.0, 8.0, 7.4), 3)  # predicted 2 ms, measured 2.6 ms
            1.3
        """
        self.predicted_drop_ms += (before_ms - predicted_ms) / self.scale
        if self.predicted_drop_ms > 1e-9 and math.isfinite(measured_ms):
            ratio = (self.start_ms - measured_ms) / self.predicted_drop_ms
            self.scale = float(min(max(ratio, self.bounds[0]), self.bounds[1]))
        return self.scale


def correction(
    before_ms: float, predicted_ms: float, measured_ms: float, bounds: Sequence[float] = (0.5, 2.0)
) -> float:
    """Measured over predicted latency drop of a step, clamped to ``bounds`` (1.0 if no drop).

    The next step scales its predicted savings by this, so a model that over- or
    under-estimates its savings (non-additive groups) is corrected by what was measured.

    Args:
        before_ms: Latency before the step (measured), in ms.
        predicted_ms: Latency the step was predicted to reach, in ms.
        measured_ms: Latency measured after the step, in ms.
        bounds: Smallest and largest ratio returned.
    """
    predicted_drop = before_ms - predicted_ms
    if not math.isfinite(measured_ms) or predicted_drop <= 1e-9:
        return 1.0
    ratio = (before_ms - measured_ms) / predicted_drop
    return float(min(max(ratio, bounds[0]), bounds[1]))
