"""Atomic writes, and the one reader and one writer of every diffloc file format.

Usage::

    write_trace(table, out / "trace.parquet");   table = read_trace(out / "trace.parquet")
    write_meta(meta, out / "meta.json");          meta = read_meta(out / "meta.json")
    write_json_format("causal_sites", data, out / "causal_sites.json"); read_json_format("causal_sites", path)
    cases = read_jsonl("experiments/cases/toy_edits.jsonl", "cases")      # user files: one error names file and line
    templates = read_lines(Path("templates.txt"), "templates")
    write_model_defaults(model.defaults, folder / "diffloc.json");  defaults = read_model_defaults(folder / "diffloc.json")

Every file carries a schema version: JSON files a top-level ``"schema": "<format>/<version>"``,
Parquet tables the key ``diffloc_schema`` in their Arrow metadata. A file without one is
version 1 (written before versions existed) and still reads; a file from a newer diffloc gives
one line naming the format and both versions. Writes go to a temporary file in the same
folder and are renamed over the target, so a reader never sees half a file.

A file that exists but cannot be parsed (not JSON, a JSONL line that is not JSON, a damaged
Parquet, npz or safetensors file) is bad input, not a bug: every reader here raises
:class:`~tracing.errors.InputFileError` naming the file (and, for JSONL and text files, the
line), which the CLI prints as one line with exit code 2.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DifflocInputError, FormatVersionError, InputFileError

#: format -> current schema version. Bump a version when a reader must tell files apart.
VERSIONS = {"trace": 2, "meta": 2, "causal_sites": 3, "edit": 2, "summary": 2, "strip": 1, "diagnosis": 1, "stability": 1,
            "model_defaults": 1}


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _schema(fmt: str) -> str:
    return f"{fmt}/{VERSIONS[fmt]}"


def _check_version(fmt: str, found: str | None, path: Path) -> int:
    if found is None:
        return 1
    name, _, ver = str(found).partition("/")
    if name != fmt or not ver.isdigit():
        raise FormatVersionError(f"{path} is a {found!r} file, not {fmt!r}")
    if int(ver) > VERSIONS[fmt]:
        raise FormatVersionError(f"{path} has {fmt} schema version {ver}; this diffloc reads versions 1..{VERSIONS[fmt]}")
    return int(ver)


@contextmanager
def _unreadable(path: Path, kind: str, errors: tuple = ()):
    """A parse error of a binary file becomes one input error naming the file."""
    import zipfile

    try:
        yield
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, *errors) as err:
        if isinstance(err, DifflocInputError):
            raise
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputFileError(f"{path} is not a readable {kind} file ({first})") from None


def _need(path: Path) -> Path:
    if not path.exists():
        raise InputFileError(f"{path} does not exist")
    return path


# ---- JSON formats: meta, causal_sites, edit, summary, diagnosis, stability ---------------------------

def write_json_format(fmt: str, obj: dict, path: str | Path) -> None:
    """Write ``obj`` as format ``fmt`` (adds its ``schema`` key)."""
    body = {"schema": _schema(fmt), **{k: v for k, v in obj.items() if k != "schema"}}
    atomic_write_bytes(path, (json.dumps(body, indent=2, default=str) + "\n").encode())


def read_json_format(fmt: str, path: str | Path) -> dict:
    """Read a format-``fmt`` JSON file; ``schema`` is kept, version 1 files read as they are."""
    path = _need(Path(path))
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputFileError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    _check_version(fmt, data.get("schema") if isinstance(data, dict) else None, path)
    return data


def write_meta(meta: dict, path: str | Path) -> None:
    write_json_format("meta", meta, path)


def read_meta(path: str | Path) -> dict:
    return read_json_format("meta", path)


def write_plain_json(obj: Any, path: str | Path) -> None:
    """JSON that is no diffloc format (benchmark output, user-facing summaries of scripts)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_model_defaults(defaults: dict, path: str | Path) -> None:
    """A toy-layout model folder's ``diffloc.json`` (arch, world, sampler defaults, training config)."""
    write_json_format("model_defaults", defaults, path)


def read_model_defaults(path: str | Path) -> dict:
    """The defaults of a ``diffloc.json``, without its ``schema`` key (files without one are version 1)."""
    data = read_json_format("model_defaults", path)
    if not isinstance(data, dict):
        raise InputFileError(f"{path} is not a JSON object")
    return {k: v for k, v in data.items() if k != "schema"}


# ---- user text files: JSONL records and line lists ----------------------------------------------

def _text(path: Path, what: str) -> str:
    if not path.exists():
        raise InputFileError(f"{what} file {path} does not exist")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"{what} file {path} cannot be read as text ({err})") from None


def read_jsonl(path: str | Path, what: str = "JSONL") -> list[tuple[int, Any]]:
    """``(line number, object)`` of every non-blank line; a line that is not JSON is one error
    naming the file and the line."""
    path = Path(path)
    out = []
    for n, line in enumerate(_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as err:
            raise InputFileError(f"{what} file {path}, line {n}: not valid JSON ({err.msg} at column {err.colno})") from None
    return out


def read_lines(path: str | Path, what: str) -> list[str]:
    """The stripped non-blank lines of a text file, ``#`` comment lines dropped."""
    path = Path(path)
    return [line.strip() for line in _text(path, what).splitlines() if line.strip() and not line.startswith("#")]


# ---- Parquet: the trace table (trace.parquet and its shards) -----------------------------------

def write_trace(table, path: str | Path) -> None:
    """A trace table (pandas) as Parquet, with its schema version in the Arrow metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"diffloc_schema"] = _schema("trace").encode()
    arrow = arrow.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        pq.write_table(arrow, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_trace(path: str | Path):
    """A trace table; version-1 files (no ``method`` column) get ``method='exact'``."""
    import pyarrow.parquet as pq

    path = _need(Path(path))
    with _unreadable(path, "Parquet"):
        meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"diffloc_schema")
    version = _check_version("trace", raw.decode() if raw else None, path)
    with _unreadable(path, "Parquet"):
        arrow = pq.read_table(path)
    table = arrow.to_pandas()
    if version < 2:
        if "method" not in table.columns:
            table["method"] = "exact"
        if "skipped_noop" not in table.columns:
            table["skipped_noop"] = False
    if "skipped_duplicate" not in table.columns:  # added within version 2: older files generated every such row
        table["skipped_duplicate"] = False
    return table


def write_table(table, path: str | Path) -> None:
    """A plain result table (edit evaluation rows) as Parquet, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_table(path: str | Path):
    import pandas as pd

    path = _need(Path(path))
    with _unreadable(path, "Parquet"):
        return pd.read_parquet(path)


# ---- image strips of a sweep unit (npz) ---------------------------------------------------------

def write_strip(images_uint8, rows, path: str | Path) -> None:
    """Clean, corrupted and best restored images of one unit: uint8 [K, 3, H, W] and their row ids."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images_uint8, rows=np.asarray(rows), schema=np.array(_schema("strip")))
    atomic_write_bytes(path, buf.getvalue())


def read_strip(path: str | Path) -> tuple:
    import numpy as np

    path = _need(Path(path))
    with _unreadable(path, "npz"):
        data = np.load(path)
        schema = str(data["schema"]) if "schema" in data.files else None
        images, rows = data["images"], data["rows"]
    _check_version("strip", schema, path)
    return images, rows


# ---- tensors of an edit record (safetensors) ------------------------------------------------------

def write_tensors(tensors: dict, path: str | Path) -> None:
    """Named tensors (an edit's float64 delta, and its original weight where needed) as safetensors."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def read_tensors(path: str | Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _need(Path(path))
    with _unreadable(path, "safetensors", (SafetensorError,)):
        return load_file(str(path))
