"""Tracing a network for QAT with torch.fx, without freezing its train-mode branches.

torch.fx runs ``forward`` once with proxies, so a Python value read there is frozen into the
graph as a constant. ``self.training`` is one: torchvision's ``StochasticDepth`` (EfficientNet,
ConvNeXt, Swin...) calls the fx-wrapped ``stochastic_depth(x, p, mode, self.training)``, and
traced while the model trains (QAT prepares it in ``on_train_start``) the call keeps
``training=True`` for good. The prepared model then drops residual branches at random in
eval, and the exported ONNX file carries the random draw too (``RandomUniformLike``): measured
on torchvision's efficientnet_b1 after a short QAT fit (``benchmarks/architectures.py``), two
PyTorch evals of one batch differed by 3.2 (logits up to 3.6) and ONNX Runtime disagreed with
PyTorch by 0.41 of the largest logit.

:func:`trace_mode_independent` traces the network in train and in eval mode; every call
where they differ reads the mode at run time instead: a ``True`` that is ``False`` in eval
comes from the graph module's own ``training`` flag, any other difference (a branch) is
traced as one call of the module that made it (a leaf), which reads its own flag.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx, nn

# Each round makes at least one more module a leaf; a network needing more is refused.
_MAX_ROUNDS = 16


class ModeDependentForward(ValueError):
    """A network whose trace depends on its mode in a way no leaf module can absorb."""


class LeafTracer(fx.Tracer):
    """torch.fx's tracer, keeping layers other callbacks swapped in and BatchNorms as leaves.

    A module class that sets ``keep_as_fx_leaf = True`` (the binary layers do) is traced as one
    call, so QAT never rewrites inside a layer another technique owns. Every BatchNorm, subclasses
    from outside ``torch.nn`` included (timm's ``BatchNormAct2d``), is one call too: tracing into
    its ``forward`` would freeze the train-mode branch (``training=True``) into the graph, so
    the model would normalize with batch statistics in eval and export too.

    Args:
        leaves: Qualified names of further modules to trace as one call (see
            :func:`trace_mode_independent`).
    """

    def __init__(self, leaves: Iterable[str] = ()) -> None:
        super().__init__()
        self.leaves = frozenset(leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.leaves
            or bool(getattr(type(m), "keep_as_fx_leaf", False))
            or isinstance(m, nn.modules.batchnorm._BatchNorm)
            or super().is_leaf_module(m, module_qualified_name)
        )


class TrainingFlag(nn.Module):
    """Returns its own ``training``: where a traced graph reads the mode at run time."""

    def forward(self) -> bool:
        return self.training


TRAINING_FLAG = "training_flag"


def trace_mode_independent(model: nn.Module) -> tuple[fx.GraphModule, frozenset[str]]:
    """A traced copy of ``model`` that runs its train branches in train mode only.

    ``model`` is traced in train and in eval mode (each module's own mode is restored after)
    and the two graphs are compared node by node:

    - a call whose arguments differ only in a ``True`` (train) against a ``False`` (eval), as
      ``stochastic_depth(x, p, mode, self.training)`` or ``F.dropout(..., training=...)``,
      reads the mode at run time instead, from a :class:`TrainingFlag` at ``training_flag``
      (it follows ``train()``/``eval()`` on the returned module);
    - any other difference (a branch taken only in training) makes the innermost module that
      created it a leaf, called as one module that reads its own mode, and both are traced
      again, until only such arguments differ.

    Returns:
        The graph module (parameters shared with ``model``) and the names of the modules made
        leaves for their mode.

    Raises:
        ModeDependentForward: If ``forward`` of ``model`` itself branches on its mode (no
            submodule to keep as one call), or the graphs still differ after
            :data:`_MAX_ROUNDS` rounds.
    """
    modes = {module: module.training for module in model.modules()}
    attributes = set(vars(model))
    leaves: set[str] = set()
    try:
        for _ in range(_MAX_ROUNDS):
            graphs = []
            for training in (True, False):
                model.train(training)
                graphs.append(LeafTracer(leaves).trace(model))
            differing, flags = _compare(*graphs)
            if not differing:
                break
            if "" in differing:
                raise ModeDependentForward(
                    f"{type(model).__name__}.forward branches on self.training outside any "
                    "submodule; torch.fx would freeze its train-mode branch into the quantized "
                    "graph, so the model would keep behaving as in training in eval and export. "
                    "Move that step into a submodule or leave this network out with ignore=[...]."
                )
            leaves |= differing
        else:
            raise ModeDependentForward(
                f"{type(model).__name__} traces differently in train and eval mode after "
                f"{_MAX_ROUNDS} rounds of keeping modules as single calls ({sorted(leaves)}); "
                "leave it out with ignore=[...]."
            )
        graph_module = fx.GraphModule(model, graphs[0], type(model).__name__)
    finally:
        for module, training in modes.items():
            module.training = training
        for name in set(vars(model)) - attributes:  # tensor constants fx set on the model
            delattr(model, name)
    if flags:
        _read_mode_at_run_time(graph_module, flags)
    return graph_module, frozenset(leaves)


def _compare(train: fx.Graph, eval_: fx.Graph) -> tuple[set[str], list[tuple[int, int | str]]]:
    """Where two traces differ: modules to keep as leaves, and mode arguments to read live.

    Returns the innermost modules that created differing nodes (``""``: the root), and the
    ``(node position, argument position or keyword)`` of each ``True``/``False`` argument
    pair. After a node whose operation differs the graphs are no longer aligned, so the
    comparison stops there.
    """
    differing: set[str] = set()
    flags: list[tuple[int, int | str]] = []
    index = {node: i for graph in (train, eval_) for i, node in enumerate(graph.nodes)}
    for position, (a, b) in enumerate(zip(train.nodes, eval_.nodes, strict=False)):
        if a.op != b.op or (a.target != b.target and not _both_constants(a, b)):
            return differing | ({_creator(a), _creator(b)} - {""} or {""}), flags
        arguments = []
        for node in (a, b):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: index[n])
            arguments.append({**dict(enumerate(args)), **kwargs})
        if arguments[0] == arguments[1]:
            continue
        keys = [k for k in arguments[0] if arguments[0][k] != arguments[1].get(k)]
        if arguments[0].keys() == arguments[1].keys() and all(
            arguments[0][k] is True and arguments[1][k] is False for k in keys
        ):
            flags += [(position, key) for key in keys]
        else:
            differing.add(_creator(a))
    if len(train.nodes) != len(eval_.nodes):
        longer = train if len(train.nodes) > len(eval_.nodes) else eval_
        differing.add(_creator(list(longer.nodes)[min(len(train.nodes), len(eval_.nodes))]))
    return differing, flags


def _both_constants(a: fx.Node, b: fx.Node) -> bool:
    """Two tensor constants, which fx names by a counter that runs on across traces."""
    return a.op == "get_attr" and all(str(n.target).startswith("_tensor_constant") for n in (a, b))


def _read_mode_at_run_time(
    graph_module: fx.GraphModule, flags: list[tuple[int, int | str]]
) -> None:
    """Replace each frozen ``True`` at ``flags`` by a :class:`TrainingFlag` call's result."""
    graph_module.add_submodule(TRAINING_FLAG, TrainingFlag())
    nodes = list(graph_module.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    with graph_module.graph.inserting_after(placeholders[-1] if placeholders else None):
        flag = graph_module.graph.call_module(TRAINING_FLAG, ())
    for position, key in flags:
        node = nodes[position]
        if isinstance(key, int):
            node.args = (*node.args[:key], flag, *node.args[key + 1 :])
        else:
            node.kwargs = {**node.kwargs, key: flag}
    graph_module.recompile()


def _creator(node: fx.Node) -> str:
    """The qualified name of the innermost module whose ``forward`` created ``node``.

    A leaf's own call node is created by the module calling it (its stack ends with the leaf).
    """
    names = [str(name) for name, _ in (node.meta.get("nn_module_stack") or {}).values()]
    if node.op == "call_module" and names:
        names.pop()
    return names[-1] if names else ""
