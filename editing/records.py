"""Edits as records: apply a weight delta, undo it bit for bit, save an edited model.

Usage::

    rec = apply_edit(model, "quickfix", {site: new_weight}, info={...})   # in place, returns EditRecord
    undo_edit(model, rec)                                                  # bit-exact original weights
    save_edited(model, [rec], "results/edited", source="toy")             # diffusers folder + edit.json

An edited model folder holds the model saved with ``save_pretrained`` (safetensors), an
``edit.json`` listing every edit in order (method, site, prompts, λ, SHA-256 of the weights
before and after), and ``edits/NNN.safetensors`` with each edit's delta in float64 (plus the
original tensor, only when float64 cannot represent the difference exactly). The source model
is never written: an output path equal to or inside the source is refused.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from diffloc.tracing.errors import DifflocInputError, InputFileError, OutputExistsError
from diffloc.tracing.io import read_json_format, read_tensors, write_json_format, write_model_defaults, write_tensors
from diffloc.tracing.sites import Site


class EditError(DifflocInputError):
    """An edit that cannot be applied, undone or saved as asked."""


def weight_hash(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (dtype and shape included)."""
    data = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


@dataclass
class EditRecord:
    """One applied edit: which weight, how, and the exact delta."""

    method: str
    site: str                      # the module whose ``weight`` changed
    hash_before: str
    hash_after: str
    info: dict = field(default_factory=dict)   # prompts, λ, layer, timings ...
    delta: torch.Tensor | None = field(default=None, repr=False)    # float64 [out, in]
    before: torch.Tensor | None = field(default=None, repr=False)   # only if delta is inexact

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("delta"), d.pop("before")
        return d


def _weight(model, site: str) -> torch.nn.Parameter:
    module = model.module(site)
    if not hasattr(module, "weight"):
        raise EditError(f"site {site} has no weight to edit; editable sites are Linear layers such as ...self_attn.out_proj or ...mlp.fc2")
    return module.weight


@torch.no_grad()
def apply_edit(model, method: str, new_weights: dict[str, torch.Tensor], info: dict | None = None) -> list[EditRecord]:
    """Replace the weights at sites by ``new_weights`` (site -> tensor); one record per site."""
    records = []
    for site, new in new_weights.items():
        site = str(Site.parse(site))
        w = _weight(model, site)
        if tuple(new.shape) != tuple(w.shape):
            raise EditError(f"new weight for {site} has shape {tuple(new.shape)}; expected {tuple(w.shape)}")
        old = w.detach().clone()
        new = new.to(w.dtype)
        delta = new.double() - old.double()
        exact = torch.equal((new.double() - delta).to(w.dtype), old) and torch.equal((old.double() + delta).to(w.dtype), new)
        w.copy_(new)
        records.append(EditRecord(method, site, weight_hash(old), weight_hash(new), dict(info or {}), delta.cpu(),
                                  None if exact else old.cpu()))
    return records


@torch.no_grad()
def undo_edit(model, record: EditRecord) -> None:
    """Restore the weight an edit changed; checks the hashes on both sides."""
    w = _weight(model, record.site)
    if weight_hash(w) != record.hash_after:
        raise EditError(f"edit record does not match the model: {record.site} is not the weight this {record.method} edit produced")
    old = record.before if record.before is not None else (w.detach().double() - record.delta.to(w.device)).to(w.dtype)
    if weight_hash(old) != record.hash_before:
        raise EditError(f"undo of {record.method} at {record.site} is not bit-exact; the record is damaged")
    w.copy_(old.to(w.device))


@torch.no_grad()
def redo_edit(model, record: EditRecord) -> None:
    """Apply a recorded edit to a model holding the original weight."""
    w = _weight(model, record.site)
    if weight_hash(w) != record.hash_before:
        raise EditError(f"edit record does not match the model: {record.site} differs from the weight the edit was made on")
    w.copy_((w.detach().double() + record.delta.to(w.device)).to(w.dtype))


def check_out_path(out: str | Path, source: str | None) -> Path:
    """Refuse an output path equal to or inside the source model folder."""
    out = Path(out).expanduser().resolve()
    if source:
        src = Path(source).expanduser()
        src = src.parent if src.is_file() else src
        if src.exists():
            src = src.resolve()
            if out == src or src in out.parents:
                raise EditError(f"output path {out} is the source model or inside it; choose a folder outside {src}")
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"output folder {out} exists and is not empty; choose a new --out")
    return out


def _save_model(model, folder: Path) -> None:
    if model.vae is None or "arch" in model.defaults:  # the toy layout (a diffloc.json folder): components + diffloc.json
        for name, module in model.modules.items():
            module.save_pretrained(folder / name)
        if model.vae is not None:                        # the latent toy-dit's autoencoder (load_model reads vae/)
            model.vae.save_pretrained(folder / "vae")
        for name, tok in model.tokenizers.items():
            tok.save_pretrained(folder / name.replace("text_encoder", "tokenizer"))
        model.scheduler.save_pretrained(folder / "scheduler")
        defaults = dict(model.defaults)
        if "text_encoder_from" in defaults:  # toy-dit: its (possibly edited) text encoder is saved here, not read from beside it
            defaults["text_encoder_from"] = "."
        write_model_defaults(defaults, folder / "diffloc.json")
        return
    model.family.stock_pipeline(model).save_pretrained(folder, safe_serialization=True)


def save_edited(model, records: list[EditRecord], out: str | Path, source: str | None = None) -> Path:
    """Save the edited model and its edit records atomically into ``out``."""
    out = check_out_path(out, source if source is not None else model.source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        _save_model(model, tmp)
        (tmp / "edits").mkdir()
        entries = []
        for i, rec in enumerate(records):
            tensors = {"delta": rec.delta}
            if rec.before is not None:
                tensors["before"] = rec.before
            write_tensors(tensors, tmp / "edits" / f"{i:03d}.safetensors")
            entries.append(dict(rec.to_json(), file=f"edits/{i:03d}.safetensors"))
        meta = {"base_model": model.source or model.name, "arch": model.arch, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "edits": entries}
        write_json_format("edit", meta, tmp / "edit.json")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_records(folder: str | Path) -> list[EditRecord]:
    """Edit records of an edited model folder, in the order they were applied."""
    folder = Path(folder)
    path = folder / "edit.json"
    if not path.exists():
        raise InputFileError(f"{folder} has no edit.json; it is not an edited model folder")
    records = []
    for e in read_json_format("edit", path)["edits"]:
        tensors = read_tensors(folder / e["file"])
        records.append(EditRecord(e["method"], e["site"], e["hash_before"], e["hash_after"], e.get("info", {}),
                                  tensors["delta"], tensors.get("before")))
    return records
