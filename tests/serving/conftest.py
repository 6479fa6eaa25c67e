"""Fixtures: one digits export per session, one real server (subprocess) per test module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lightning_accel import DigitsDataModule, ExportOnFitEnd
from tests.conftest import quiet_trainer, small_module

NO_TORCH = Path(__file__).parent / "no_torch"
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN fitted briefly on the digits and exported (verified, not timed)."""
    return fit_digits_export(tmp_path_factory.mktemp("serving") / "export")


def fit_digits_export(out: Path) -> Path:
    """Fit the small CNN on a few digits batches with ExportOnFitEnd into ``out``."""
    data = DigitsDataModule(batch_size=64)
    trainer = quiet_trainer(
        out.parent,
        max_epochs=1,
        limit_train_batches=5,
        callbacks=[ExportOnFitEnd(out, benchmark=False, threads=1)],
    )
    trainer.fit(small_module(), datamodule=data)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


def start_server(export_dir: Path, log: Path, *args: str, timeout: float = 60) -> Server:
    """``python -m lightning_accel.cli.serve`` with torch and Lightning unimportable."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(NO_TORCH), str(ROOT)])}
    command = [sys.executable, "-m", "lightning_accel.cli.serve", str(export_dir)]
    command += ["--port", str(port), "--threads", "1", *args]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return Server(url, process, log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()}")


def stop_server(server: Server) -> int:
    """SIGTERM, then the exit code (graceful shutdown within 30 s)."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise


@pytest.fixture(scope="module")
def server(digits_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A batching server on the digits export; small limits so the limit tests stay small."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = start_server(
        digits_export,
        log,
        "--max-batch-size",
        "8",
        "--batch-timeout-ms",
        "5",
        "--max-body-bytes",
        "65536",
        "--max-samples",
        "32",
    )
    yield running
    code = stop_server(running)
    assert code == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()
