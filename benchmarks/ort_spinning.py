"""How ONNX Runtime's thread spinning distorts a cross-runtime ratio timed in one process (#14).

A candidate ONNX file on OpenVINO is timed against a baseline ONNX file on ONNX Runtime
(``compare_latency``, alternating rounds) in one process, with the ORT session in three settings:
default spinning, ``session.intra_op.allow_spinning=0`` and ``session.force_spinning_stop=1``
(threads spin during a run and stop when it returns). The reference is the same ratio with each
runtime in its own fresh process. Each setting's cost to ORT itself is its latency alone against
the default's. Every figure comes from ``--rounds`` fresh processes per setting; reported as
median [min-max] over rounds.

    .venv/bin/python benchmarks/ort_spinning.py BASELINE.onnx CANDIDATE.onnx   # ~3 min

The main job's files work: ``dense.onnx`` and ``pruned_int8.onnx`` from ``lightning-accel fit``.
Inputs: float32 of the baseline's static shape at batch 1 and 64.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SETTINGS = {"spinning": {}, "allow_spinning=0": {"session.intra_op.allow_spinning": "0"}}
SETTINGS["force_spinning_stop=1"] = {"session.force_spinning_stop": "1"}
BATCHES = (1, 64)

_CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import numpy as np
import onnxruntime as ort
from lightning_accel.backends import get_backend
from lightning_accel.backends.timing import compare_latency, time_calls

baseline, candidate, what, entries = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 2, 1, 3
for key, value in entries.items():
    options.add_session_config_entry(key, value)
session = ort.InferenceSession(baseline, options, providers=["CPUExecutionProvider"])
meta = session.get_inputs()[0]
openvino = None
if what != "ort":
    openvino = get_backend("openvino").compile(Path(candidate), Path(tempfile.mkdtemp()), threads=2)


class Reference:
    def run(self, inputs):
        return session.run(None, {meta.name: inputs})[0]


out = {}
for b in (1, 64):
    x = np.random.default_rng(0).standard_normal((b, *meta.shape[1:])).astype(np.float32)
    runs = 80 if b == 1 else 20
    if what == "together":
        out[b] = compare_latency(openvino, Reference(), x, b, 60, threads=2).speedup
    else:
        model = Reference() if what == "ort" else openvino
        out[b] = float(np.median(time_calls(lambda: model.run(x), 10, runs, 0.0)))
print(json.dumps(out))
"""


def _child(baseline: str, candidate: str, what: str, entries: dict[str, str]) -> dict[str, float]:
    """One fresh process: ``ort`` / ``openvino`` latency alone (ms) or the in-process speedup."""
    args = [sys.executable, "-c", _CHILD, baseline, candidate, what, json.dumps(entries)]
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return {int(k): v for k, v in json.loads(output.splitlines()[-1]).items()}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", help="ONNX file timed on ONNX Runtime (e.g. dense fp32)")
    parser.add_argument("candidate", help="ONNX file timed on OpenVINO (e.g. pruned int8)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    alone: dict[str, list[dict[int, float]]] = {name: [] for name in SETTINGS}
    together: dict[str, list[dict[int, float]]] = {name: [] for name in SETTINGS}
    openvino: list[dict[int, float]] = []
    for _ in range(args.rounds):  # every setting once per round: drift lands on all of them
        openvino.append(_child(args.baseline, args.candidate, "openvino", {}))
        for name, entries in SETTINGS.items():
            alone[name].append(_child(args.baseline, args.candidate, "ort", entries))
            together[name].append(_child(args.baseline, args.candidate, "together", entries))
    for b in BATCHES:
        fresh = [o[b] / v[b] for o, v in zip(alone["spinning"], openvino, strict=True)]
        print(f"batch {b}: OpenVINO speedup over ORT, separate processes: {_spread(fresh)}")
        for name in SETTINGS:
            cost = [x[b] / y[b] for x, y in zip(alone[name], alone["spinning"], strict=True)]
            ratio = [r[b] for r in together[name]]
            print(
                f"  ORT {name:<22} ORT latency vs default {_spread(cost)}; "
                f"OpenVINO speedup in one process {_spread(ratio)}"
            )


if __name__ == "__main__":
    main()
