"""Serving load test: `lightning-accel serve` against the bare runtime session, on 127.0.0.1.

A pruned model and its int8 (QAT) version are exported (ResNet-18 on 28x28 Fashion-MNIST, a
short fit on a subset: a load test needs the model's size, not its accuracy; --pruned-dir and
--int8-dir take existing export folders instead, e.g. the main job's), then each is served with
dynamic batching on and off. The runtime alone at batch 1 and at the batch size bounds what
batching can gain on this CPU; it is measured first. At concurrency 1, 4, 16 and 64 a
fixed number of requests is sent; throughput, p50/p95/p99 latency and errors are recorded.
The bare ONNX Runtime session's latency on the same input (same thread count) is measured in
the same run, before and after each server, so the server's own overhead is a measured
difference. Then resident memory of the server's processes over many requests, and a fuzz of
bad requests.

Load driver: an asyncio ``aiohttp`` client in this process (``--client httpx`` for the tests'
client). Why: a well-kept asyncio HTTP client (not a dependency of the package: ``pip install
aiohttp``; the script says so when it is missing), no extra service (Locust needs gevent and
its own processes), per-request latencies directly, and 64 concurrent keep-alive connections on
one core. httpx was the driver first: its connection pool, not the server, set the ceiling (131
req/s at concurrency 64 where aiohttp got 1,000 from the same server); ``--compare-httpx``
records both. The client shares the machine's CPUs with the server: figures include its cost.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/serving.py --compare-httpx  # ~10 min, 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).parents[1]


# ------------------------------------------------------------------------------ exports
def export_models(out: Path, arch: str, train_size: int) -> tuple[Path, Path]:
    """A short fit of ``arch`` on Fashion-MNIST: 50% structured pruning, then the same plus QAT.

    A load test needs the model's size and graph, not its accuracy: 2,048 images and three or
    four epochs. Not fewer: after 512 images ResNet-18's logits were so close to ties that the
    int8 export failed its own verification (96% top-1 agreement with the QAT model, 99%
    needed), and a failed backend is never served. The main job's export
    folders can be passed instead (``--pruned-dir``/``--int8-dir``).
    """
    import lightning.pytorch as pl

    from lightning_accel import (
        ClassificationModule,
        ExportOnFitEnd,
        FashionMNISTDataModule,
        GradualPruning,
        QuantizationAware,
    )

    folders = {"pruned": out / arch / "pruned", "int8": out / arch / "int8"}
    for name, folder in folders.items():
        if _verified(folder):
            continue  # exported by an earlier run; one whose verification failed is redone
        callbacks: list[pl.Callback] = [
            GradualPruning(0.5, mode="structured", end_epoch=1, round_to=8)
        ]
        if name == "int8":
            callbacks.append(
                QuantizationAware("onnxruntime", start_epoch=2, freeze_observers_epoch=3)
            )
        callbacks.append(ExportOnFitEnd(folder, benchmark=False, threads=1))
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=4 if name == "int8" else 3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        data = FashionMNISTDataModule(
            batch_size=128, train_size=train_size, val_size=256, test_size=256
        )
        trainer.fit(ClassificationModule(arch, input_size=28, lr=0.05), datamodule=data)
        print(f"exported {name} to {folder} (val/acc {trainer.callback_metrics.get('val/acc')})")
    return folders["pruned"], folders["int8"]


def _verified(folder: Path) -> bool:
    """Whether ``folder`` holds an export whose ONNX Runtime verification passed."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    backend = manifest.get("backends", {}).get("onnxruntime", {})
    return bool(backend.get("verification") == "passed")


# ------------------------------------------------------------------------------ bare runtime
def bare_latency_ms(export_dir: Path, sample: np.ndarray, threads: int, runs: int) -> float:
    """Median latency of the bare ONNX Runtime session on one sample (batch 1)."""
    return bare_batch_ms(export_dir, sample[np.newaxis], threads, runs)


def bare_batch_ms(export_dir: Path, batch: np.ndarray, threads: int, runs: int) -> float:
    """Median latency of the bare ONNX Runtime session on ``batch`` ``[n, *sample_shape]``."""
    from lightning_accel.backends.onnxruntime import ort_session

    session = ort_session(export_dir / "model.onnx", threads)
    feed = {session.get_inputs()[0].name: batch}
    for _ in range(max(5, runs // 20)):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def batching_bound(export_dir: Path, samples: np.ndarray, threads: int, batch: int) -> dict:
    """What batching can gain at most on this CPU: per-sample cost at batch 1 vs ``batch``.

    The runtime alone, no server: ``bound = batch-1 latency / (batch-``batch`` latency / batch)``.
    A server batching ``batch`` requests per call cannot raise throughput by more than this
    (less, since its per-request HTTP and queue work is not batched).
    """
    one = bare_batch_ms(export_dir, samples[:1], threads, 300)
    many = bare_batch_ms(export_dir, samples[:batch], threads, 40)
    return {
        "batch": batch,
        "batch1_ms": one,
        f"batch{batch}_ms": many,
        "per_sample_ms": many / batch,
        "bound": one / (many / batch),
    }


# ------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(export_dir: Path, threads: int, batch: int, timeout_ms: float):
    port = free_port()
    command = [sys.executable, "-m", "lightning_accel.cli.serve", str(export_dir)]
    command += ["--port", str(port), "--threads", str(threads), "--max-batch-size", str(batch)]
    command += ["--batch-timeout-ms", str(timeout_ms)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(process.stderr.read().decode() if process.stderr else "no server")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc), MiB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(
                next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]
            )
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


# ------------------------------------------------------------------------------ load
def stack_latency_ms(url: str, body: bytes, runs: int = 300) -> dict:
    """Where a request's time goes (p50, one client, keep-alive).

    HTTP alone (GET /health), HTTP + body checks (a 422 answered in the HTTP process), and the
    whole path through LitServe's queue to the runtime worker and back (POST /predict).
    """
    bad = json.dumps([[1.0, 2.0]]).encode()
    parts = {"health": ("GET", b""), "rejected_422": ("POST", bad), "predict": ("POST", body)}
    out = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, (method, content) in parts.items():
            path = "/health" if method == "GET" else "/predict"
            times = []
            for i in range(runs + 30):
                started = time.perf_counter()
                client.request(method, path, content=content or None)
                if i >= 30:
                    times.append(time.perf_counter() - started)
            out[name] = 1000 * statistics.median(times)
    out["predict_http_client"] = http_client_latency_ms(url, body, runs)
    return out


def http_client_latency_ms(url: str, body: bytes, runs: int) -> float:
    """p50 of ``POST /predict`` from the standard library's ``http.client`` (keep-alive).

    The lightest Python client: its difference to the ``httpx`` figure is client cost, not
    the server's.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"content-type": "application/json"}
    times = []
    try:
        for i in range(runs + 30):
            started = time.perf_counter()
            connection.request("POST", "/predict", body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"POST /predict answered {answer.status}")
            if i >= 30:
                times.append(time.perf_counter() - started)
    finally:
        connection.close()
    return 1000 * statistics.median(times)


async def load(url: str, bodies: list[bytes], concurrency: int, client: str = "aiohttp") -> dict:
    """Send ``bodies`` with ``concurrency`` requests in flight; latency per request.

    ``client``: ``"aiohttp"`` (default) or ``"httpx"``, each with ``concurrency`` keep-alive
    connections. httpx's connection pool is the bottleneck past a few connections on this
    machine (measured against one server: 131 req/s at concurrency 64 where aiohttp gets
    1,000), so the figures come from aiohttp and httpx stays for comparison.
    """
    latencies: list[float] = []
    errors = 0
    queue = iter(bodies)
    headers = {"content-type": "application/json"}
    started = time.perf_counter()
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as session:

            async def httpx_worker() -> None:
                nonlocal errors
                for body in queue:
                    sent = time.perf_counter()
                    try:
                        answer = await session.post("/predict", content=body, headers=headers)
                        ok = answer.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    latencies.append(time.perf_counter() - sent)
                    errors += not ok

            started = time.perf_counter()
            await asyncio.gather(*(httpx_worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started
    else:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as aio:

            async def aiohttp_worker() -> None:
                nonlocal errors
                for body in queue:
                    sent = time.perf_counter()
                    try:
                        async with aio.post("/predict", data=body, headers=headers) as answer:
                            await answer.read()
                            ok = answer.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        ok = False
                    latencies.append(time.perf_counter() - sent)
                    errors += not ok

            started = time.perf_counter()
            await asyncio.gather(*(aiohttp_worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "client": client,
        "requests": len(bodies),
        "concurrency": concurrency,
        "throughput_rps": len(bodies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def bad_bodies(sample: np.ndarray, count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    valid = json.dumps(sample.tolist()).encode()
    kinds = [
        {"content": b""},
        {"content": b"[1, 2"},
        {"content": json.dumps([[1.0, 2.0]]).encode()},
        {"content": json.dumps([["x"] * 28] * 28).encode()},
        {"content": valid.replace(b"0.", b"NaN", 1)},
        {"content": b"\x89PNG\r\n\x1a\n broken", "headers": {"content-type": "image/png"}},
        {"content": b"[" + b"0," * 2_100_000 + b"0]"},  # over the 4 MiB default limit
        {"content": json.dumps([sample.tolist()] * 300).encode()},  # > 256 samples
    ]
    out = []
    for i in range(count):
        if i % 2:
            out.append(rng.choice(kinds))
        else:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append({"content": bytes(data)})
    return out


async def fuzz(url: str, requests: list[dict]) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        sem = asyncio.Semaphore(16)

        async def one(kwargs: dict) -> int:
            async with sem:
                try:
                    return (await client.post("/predict", **kwargs)).status_code
                except httpx.HTTPError:
                    return -1

        codes = await asyncio.gather(*(one(r) for r in requests))
    return {str(code): codes.count(code) for code in sorted(set(codes))}


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/lightning-accel-serving"))
    parser.add_argument("--pruned-dir", type=Path, default=None)
    parser.add_argument("--int8-dir", type=Path, default=None)
    parser.add_argument("--arch", default="resnet18", help="zoo model exported when no dirs")
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--threads", type=int, default=1, help="runtime threads, server and bare")
    parser.add_argument("--batch", type=int, default=16, help="max batch size when batching")
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0)
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument("--fuzz", type=int, default=1000)
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    parser.add_argument(
        "--compare-httpx",
        action="store_true",
        help="also load each server with httpx (the tests' client) at every concurrency",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serving.json")
    args = parser.parse_args()
    if args.client == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
        parser.error("--client aiohttp needs aiohttp: pip install aiohttp (or --client httpx)")

    if args.pruned_dir and args.int8_dir:
        models = {"pruned": args.pruned_dir, "int8": args.int8_dir}
    else:
        pruned, int8 = export_models(args.work_dir, args.arch, args.train_size)
        models = {"pruned": pruned, "int8": int8}
    from lightning_accel.data.fashion_mnist import load_split

    images, _ = load_split("test")
    samples = images[:256].numpy()
    bodies = [json.dumps(samples[i % len(samples)].tolist()).encode() for i in range(4096)]
    results: dict = {"settings": vars(args) | {"cpus": os.cpu_count()}, "models": {}}
    for name, folder in models.items():
        entry: dict = {"export_dir": str(folder), "bare_ms": [], "servers": {}}
        entry["batching_bound"] = batching_bound(folder, samples, args.threads, args.batch)
        print(name, "batching bound", entry["batching_bound"], flush=True)
        for batching, (batch, timeout) in {
            "on": (args.batch, args.batch_timeout_ms),
            "off": (1, 0.0),
        }.items():
            entry["bare_ms"].append(bare_latency_ms(folder, samples[0], args.threads, 2000))
            process, url = start_server(folder, args.threads, batch, timeout)
            rows = []
            asyncio.run(load(url, bodies[:200], 4, args.client))  # warm-up
            server_parts = stack_latency_ms(url, bodies[0])
            print(name, f"batching {batching}", server_parts, flush=True)
            httpx_rows = []
            for concurrency in args.concurrency:
                row = asyncio.run(load(url, bodies[: args.requests], concurrency, args.client))
                rows.append(row)
                print(name, f"batching {batching}", row, flush=True)
                if args.compare_httpx and args.client != "httpx":
                    row = asyncio.run(load(url, bodies[: args.requests], concurrency, "httpx"))
                    httpx_rows.append(row)
                    print(name, f"batching {batching}", row, flush=True)
            server: dict = {"rows": rows, "stack_ms": server_parts}
            if httpx_rows:
                server["httpx_rows"] = httpx_rows
            if batching == "on" and name == "pruned":
                rss = [tree_rss_mib(process.pid)]
                step = args.rss_requests // 4
                for i in range(4):
                    chunk = [bodies[(i * step + j) % len(bodies)] for j in range(step)]
                    asyncio.run(load(url, chunk, 16, args.client))
                    rss.append(tree_rss_mib(process.pid))
                server["rss_mib"] = rss
                before = tree_rss_mib(process.pid)
                server["fuzz_codes"] = asyncio.run(fuzz(url, bad_bodies(samples[0], args.fuzz)))
                server["fuzz_rss_mib"] = [before, tree_rss_mib(process.pid)]
                server["healthy_after_fuzz"] = httpx.get(f"{url}/health").status_code == 200
                print(name, "rss", rss, "fuzz", server["fuzz_codes"], flush=True)
            server["exit_code"] = stop_server(process)
            entry["servers"][batching] = server
        entry["bare_ms"].append(bare_latency_ms(folder, samples[0], args.threads, 2000))
        results["models"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(format_table(results))


def format_table(results: dict) -> str:
    lines = [
        "| model | batching | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["models"].items():
        for batching, server in entry["servers"].items():
            for r in server["rows"]:
                lines.append(
                    f"| {name} | {batching} | {r['concurrency']} | {r['throughput_rps']:.0f} | "
                    f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
                )
    lines.append("")
    for name, entry in results["models"].items():
        bare = entry["bare_ms"]
        c1 = {b: s["rows"][0]["p50_ms"] for b, s in entry["servers"].items()}
        overhead = {b: round(ms - statistics.median(bare), 3) for b, ms in c1.items()}
        lines.append(
            f"{name}: bare session p50 {min(bare):.3f}-{max(bare):.3f} ms; server p50 at "
            f"concurrency 1: {c1}; server overhead (p50 - bare): {overhead} ms"
        )
        stack = {b: s["stack_ms"] for b, s in entry["servers"].items()}
        lines.append(f"{name}: stack p50 ms {stack}")
        rps = {
            b: {r["concurrency"]: r["throughput_rps"] for r in s["rows"]}
            for b, s in entry["servers"].items()
        }
        if "on" in rps and "off" in rps:
            ratios = {
                c: round(rps["on"][c] / rps["off"][c], 2) for c in rps["on"] if c in rps["off"]
            }
            lines.append(f"{name}: throughput batching on / off by concurrency: {ratios}")
        if "batching_bound" in entry:
            lines.append(f"{name}: runtime alone, batching bound: {entry['batching_bound']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
