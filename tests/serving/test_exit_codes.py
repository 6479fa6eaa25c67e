"""What is refused before a server starts: one clear line each, exit code 2; and the
serving path imports neither torch nor Lightning."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_accel.cli.serve import main
from tests.serving.conftest import free_port, start_server, stop_server


def _copy(export: Path, tmp_path: Path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(export, out, ignore=shutil.ignore_patterns(".*lock"))
    return out


def _edit_manifest(folder: Path, **backend_entry: object) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["backends"]["onnxruntime"].update(backend_entry)
    path.write_text(json.dumps(manifest))


def _refused(capsys, *argv: str) -> str:
    assert main([*argv, "--port", str(free_port())]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0, message  # one line
    return message


@pytest.mark.bad_input("cli")
def test_a_missing_export_folder(tmp_path, capsys) -> None:
    message = _refused(capsys, str(tmp_path / "nope"))
    assert "export folder" in message and "does not exist" in message


@pytest.mark.bad_input("cli")
def test_an_older_export_without_manifest_names_the_re_export(digits_export, tmp_path, capsys):
    folder = _copy(digits_export, tmp_path)
    (folder / "manifest.json").unlink()
    message = _refused(capsys, str(folder))
    assert "has no manifest.json (it holds summary.json: an export from before" in message
    assert f"lightning-accel export <the run's last.ckpt> --output-dir {folder}" in message


@pytest.mark.bad_input("cli")
def test_a_failed_verification_is_never_served(digits_export, tmp_path, capsys) -> None:
    folder = _copy(digits_export, tmp_path)
    _edit_manifest(folder, verification="failed", detail="top-1 agreement 0.5 < 0.999")
    message = _refused(capsys, str(folder), "--allow-unverified")
    assert "verification on onnxruntime failed (top-1 agreement 0.5 < 0.999)" in message


@pytest.mark.bad_input("cli")
def test_a_backend_the_export_did_not_verify(digits_export, tmp_path, capsys) -> None:
    folder = _copy(digits_export, tmp_path)
    _edit_manifest(folder, verification="not run")
    message = _refused(capsys, str(folder))
    assert "did not verify onnxruntime (not run)" in message and "--allow-unverified" in message


@pytest.mark.bad_input("cli")
def test_an_unknown_backend(digits_export, capsys) -> None:
    message = _refused(capsys, str(digits_export), "--backend", "nope")
    assert "Unknown backend 'nope'" in message and "onnxruntime" in message


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max-batch-size", "0", "--max-batch-size must be an integer in [1, 4096]; got 0"),
        ("--workers", "0", "--workers must be an integer in [1, 64]"),
        ("--batch-timeout-ms", "-1", "--batch-timeout-ms must be in [0, 10000]"),
        ("--host", "example.com", "--host must be one of"),
    ],
)
def test_settings_out_of_range(digits_export, capsys, flag, value, expected) -> None:
    assert expected in _refused(capsys, str(digits_export), flag, value)


@pytest.mark.bad_input("cli")
def test_a_port_in_use_exits_2_with_one_line(digits_export) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "lightning_accel.cli.serve", str(digits_export)]
            + ["--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"lightning-accel serve: port {port} on 127.0.0.1 is in use: stop the process listening "
        f"there or pass another --port, e.g. --port {port + 1}"
    )


def test_the_serving_path_imports_neither_torch_nor_lightning(digits_export) -> None:
    code = (
        "import sys; import lightning_accel.serving as s; import lightning_accel.cli.serve;"
        f"server = s.serve({str(digits_export)!r}, port=8123);"
        "print(sorted(m for m in ('torch', 'lightning', 'torchmetrics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unverified_backend_is_served_when_allowed(digits_export, tmp_path) -> None:
    folder = _copy(digits_export, tmp_path)
    _edit_manifest(folder, verification="not run")
    server = start_server(folder, tmp_path / "log", "--allow-unverified", "--max-batch-size", "1")
    try:
        import httpx

        answer = httpx.post(f"{server.url}/predict", json=[[[0.0] * 8] * 8], timeout=30)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    finally:
        assert stop_server(server) == 0
