"""Read back an offline W&B run (the LevelDB-log ``.wandb`` file) for assertions in tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """All ``wandb_internal_pb2.Record`` messages of a run file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """Logged history rows as dicts of decoded values."""
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def summary_values(records: list[Any]) -> dict[str, Any]:
    """The last value of each key set in the run summary."""
    values: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def record_types(records: list[Any]) -> set[str]:
    return {r.WhichOneof("record_type") for r in records}


def run_file(save_dir: Path) -> Path:
    """The ``.wandb`` file of the only offline run under ``save_dir``."""
    (path,) = list(Path(save_dir).glob("wandb/offline-run-*/run-*.wandb"))
    return path
