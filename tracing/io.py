"""Atomic writes, and the one reader and one writer of every diffloc file format.

Usage::

    write_trace(table, out / "trace.parquet");   table = read_trace(out / "trace.parquet")
    write_meta(meta, out / "meta.json");          meta = read_meta(out / "meta.json")
    write_json_format("causal_sites", data, out / "causal_sites.json"); read_json_format("causal_sites", path)

Every file carries a schema version: JSON files a top-level ``"schema": "<format>/<version>"``,
Parquet tables the key ``diffloc_schema`` in their Arrow metadata. A file without one is
version 1 (written before versions existed) and still reads; a file from a newer diffloc gives
one line naming the format and both versions. Writes go to a temporary file in the same
folder and are renamed over the target, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import FormatVersionError, InputFileError

#: format -> current schema version. Bump a version when a reader must tell files apart.
VERSIONS = {"trace": 2, "meta": 2, "causal_sites": 3, "edit": 2, "summary": 2, "strip": 1, "diagnosis": 1, "stability": 1}


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
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"diffloc_schema")
    version = _check_version("trace", raw.decode() if raw else None, path)
    table = pq.read_table(path).to_pandas()
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

    return pd.read_parquet(_need(Path(path)))


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
    data = np.load(path)
    _check_version("strip", str(data["schema"]) if "schema" in data.files else None, path)
    return data["images"], data["rows"]
