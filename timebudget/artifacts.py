"""Run-folder writes. Every file is written to a temporary name and renamed, so a run that is stopped mid-write
never leaves a half-written artifact behind."""
from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; an artifact gets a plain file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def serialize(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch(path: str | Path, obj: Any) -> None:
    write_bytes(path, serialize(obj))


class Sink(Protocol):
    """Somewhere else the records of ``metrics.jsonl`` go (TensorBoard), in the batches the log writes."""

    def write(self, records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """``metrics.jsonl``: records are buffered and appended in batches (no per-step file I/O in the loop).

    Appending whole lines keeps earlier lines intact if a run dies; :meth:`flush` is called at epoch ends and at the
    close of the run. Each flush hands the same batch of records to the ``sinks``, so they cost what the log costs
    and when it costs it, never per step. ``append`` continues an existing log (a resumed run) instead of starting an
    empty one.
    """

    def __init__(self, path: str | Path, buffer_lines: int = 64, sinks: Sequence[Sink] = (), append: bool = False
                 ) -> None:
        self.path = Path(path)
        self.buffer: list[str] = []
        self.records: list[dict[str, Any]] = []  # the buffered records themselves, for the sinks
        self.buffer_lines = buffer_lines
        self.sinks = list(sinks)
        if not (append and self.path.exists()):
            write_text(self.path, "")
        elif not (text := self.path.read_text()).endswith("\n") and text:  # a line cut short by a killed run
            write_text(self.path, text[:text.rfind("\n") + 1])

    def write(self, record: dict[str, Any]) -> None:
        self.buffer.append(json.dumps(record))
        if self.sinks:
            self.records.append(record)
        if len(self.buffer) >= self.buffer_lines:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            with open(self.path, "a") as fh:
                fh.write("\n".join(self.buffer) + "\n")
            self.buffer.clear()
        if self.records:
            for sink in self.sinks:
                sink.write(self.records)
            self.records = []

    def close(self) -> None:
        """Flush, and close the sinks."""
        self.flush()
        for sink in self.sinks:
            sink.close()
