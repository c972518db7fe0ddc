"""Load a text-to-image model into one object that holds its parts and its site table.

Usage::

    model = load_model("toy")                                  # the embedded toy world
    model = load_model("runwayml/stable-diffusion-v1-5", dtype=torch.float16, device="cuda")
    model = load_model("/data/sd-v1-4")                        # a local diffusers folder
    model = load_model("/data/v1-5-pruned.safetensors")        # an A1111-style single file
    model = load_model("tiny-sd1")                             # structure-faithful replica
    model.sites.denoiser[:3], model.module("unet:mid_block.resnets.0")

Specs: ``toy``; ``toy-dit`` (the toy world's MM-DiT, or any folder exported by
``experiments/toy/train_dit.py``: ``diffloc.json`` with ``"arch": "toy-dit"``); ``tiny-sd1``,
``tiny-sd2``, ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux``, ``tiny-pixart`` (random replicas, for tests and
demos); ``random-sd1``, ``random-sd2``, ``random-sdxl`` (the full-size published models with
random weights, for speed and memory benchmarks: ``diffloc bench trace --model random-sdxl``); a local folder (diffusers layout, or the toy layout with ``diffloc.json``); a single
``.safetensors``/``.ckpt`` file; a hub id ``owner/name`` (honours ``HF_HUB_OFFLINE``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DifflocInputError, InputFileError
from .families import FAMILIES
from .sites import Site, SiteTable, resolve
from .worlds import WORLDS

REPLICAS = ("tiny-sd1", "tiny-sd2", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-pixart")
RANDOM = ("random-sd1", "random-sd2", "random-sdxl", "random-sd3", "random-flux", "random-pixart")  # full size, random weights (benchmarks)
# Sampling defaults of the DiT pipelines (FLUX.1-dev's embedded guidance 3.5; latent_size: FLUX has no sample_size)
DIT_DEFAULTS = {"sd3": {"guidance_scale": 7.0, "num_inference_steps": 10},
                "flux": {"guidance_scale": 3.5, "num_inference_steps": 10},
                "pixart": {"guidance_scale": 4.5, "num_inference_steps": 10}}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelSpecError(DifflocInputError):
    """A model spec that names nothing loadable."""


def check_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``; anything else is one clear error."""
    text = str(device)
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ModelSpecError(f"unknown device {text!r}; allowed: cpu, cuda, cuda:N, mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError(f"device {text!r} asked for but torch sees no CUDA GPU here; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelSpecError("device 'mps' asked for but torch sees no Apple GPU here; use --device cpu")
    return torch.device(text)


@dataclass
class Model:
    """A loaded text-to-image model: its family, traced components, tokenizers and site table.

    ``modules`` maps pipeline component names (the text encoders and the denoiser) to modules;
    ``tokenizers`` maps each text component to its tokenizer. The family object
    (:mod:`diffloc.tracing.families`) says which component denoises and how prompts condition it.
    """

    name: str
    arch: str
    modules: dict[str, nn.Module]
    tokenizers: dict[str, Any]
    scheduler: Any
    vae: nn.Module | None = None
    defaults: dict = field(default_factory=dict)
    source: str | None = None
    corpus: list[str] | None = None  # captions whose tokens define σ for corruption (None: whole vocab)
    world: str = "sd"                # the World its prompts, corpus and readers come from

    def __post_init__(self) -> None:
        fam = self.family
        fam.prepare(self)
        texts = {c: self.modules[c].config for c in self.text_components}
        self.sites: SiteTable = fam.site_table(self.denoiser.config, texts)
        for m in self.modules.values():
            m.eval().requires_grad_(False)
        self._embed_std: dict[str, float] = {}

    @property
    def family(self):
        from .families import FAMILIES

        return FAMILIES.get(self.arch)

    @property
    def denoiser(self) -> nn.Module:
        return self.modules[self.family.denoiser]

    @property
    def text_components(self) -> tuple[str, ...]:
        return tuple(c for c in self.family.text_components if c in self.modules)

    @property
    def text_encoder(self) -> nn.Module:
        return self.modules["text_encoder"]

    @property
    def tokenizer(self):
        """The first text encoder's tokenizer. Each encoder reads a marked word at its own positions,
        with its own tokenizer (:mod:`diffloc.tracing.encoders`, :meth:`tokenizer_for`)."""
        return self.tokenizers[self.text_components[0]]

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def sample_size(self) -> int:
        return self.family.sample_size(self)

    def module(self, site: Site | str) -> nn.Module:
        return resolve(site, self.modules)

    def tokenizer_for(self, component: str = "text_encoder"):
        """The tokenizer that feeds ``component`` (SDXL's text_encoder_2 has its own)."""
        return self.tokenizers[component]

    def tokenize(self, texts: list[str], component: str = "text_encoder") -> torch.Tensor:
        """Token ids [B, 77] padded as the model's pipeline pads them."""
        tok = self.tokenizer_for(component)
        return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids

    def embed_std(self, component: str = "text_encoder", texts: list[str] | None = None) -> float:
        """Std of the token embeddings of the tokens in ``texts`` (ROME's σ), cached per model.

        Default texts: ``self.corpus`` (the toy world's captions for the toy model), else the
        whole vocabulary.
        """
        texts = texts if texts is not None else self.corpus
        key = component if texts is None else f"{component}:{hash(tuple(texts))}"
        if key not in self._embed_std:
            weight = self.modules[component].get_input_embeddings().weight.detach().float()
            if texts is not None:
                tok = self.tokenizer_for(component)
                ids = sorted({i for t in texts for i in tok(t).input_ids} - set(tok.all_special_ids))
                weight = weight[torch.tensor(ids)]
            self._embed_std[key] = float(weight.std())
        return self._embed_std[key]


def _read_defaults(folder: Path) -> dict:
    path = folder / "diffloc.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _load_toy_folder(folder: Path, dtype: torch.dtype, name: str) -> Model:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    defaults = _read_defaults(folder)
    world_name = defaults.get("world", defaults.get("arch", "toy"))
    corpus = None
    if world_name in WORLDS:
        world = WORLDS.get(world_name)
        corpus = world.sigma_corpus() if hasattr(world, "sigma_corpus") else world.corpus()  # σ over the world's own words
    arch = defaults.get("arch", "toy")
    denoiser = FAMILIES.get(arch).denoiser
    return Model(
        name=name,
        arch=arch,
        modules={"text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
                 denoiser: UNet2DConditionModel.from_pretrained(folder, subfolder=denoiser, dtype=dtype)},
        tokenizers={"text_encoder": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")},
        scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
        defaults=defaults,
        source=str(folder),
        corpus=corpus,
        world=world_name if world_name in WORLDS else "sd",
    )


def _dit_defaults(family: str, **extra) -> dict | None:
    return {**DIT_DEFAULTS[family], **extra} if family in DIT_DEFAULTS else None


def _toy_dit_dir() -> Path:
    """Where the toy world's plug-in ships toy-dit (``dit_model_dir``); one-line error if absent."""
    world = WORLDS.get("toy") if "toy" in WORLDS else None
    folder = world.dit_model_dir() if world is not None and hasattr(world, "dit_model_dir") else None
    if folder is None or not (folder / "diffloc.json").exists():
        raise ModelSpecError(f"toy-dit weights missing at {folder}; train them with "
                             "`python -m experiments.toy.train_dit --out DIR` and copy DIR/dit there")
    return folder


def _load_toy_dit(folder: Path, dtype: torch.dtype, name: str) -> Model:
    """A toy-dit export: ``transformer/``, ``scheduler/``, ``diffloc.json`` whose ``text_encoder_from``
    (relative to the folder) holds the frozen toy ``text_encoder/`` and ``tokenizer/``; with a ``vae/``
    (an ``AutoencoderKL`` whose config carries ``scaling_factor`` and ``shift_factor``, as SD3's) it is
    a latent model and samples are decoded by it, else it draws pixels."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer

    defaults = _read_defaults(folder)
    text_dir = (folder / defaults.get("text_encoder_from", "../model")).resolve()
    if not (text_dir / "text_encoder").is_dir():
        raise InputFileError(f"toy-dit at {folder}: its text encoder folder {text_dir / 'text_encoder'} does not exist "
                             "(diffloc.json's text_encoder_from)")
    world = defaults.get("world", "toy")
    corpus = WORLDS.get(world).sigma_corpus() if world in WORLDS and hasattr(WORLDS.get(world), "sigma_corpus") else None
    return Model(name=name, arch="toy-dit",
                 modules={"text_encoder": CLIPTextModel.from_pretrained(text_dir, subfolder="text_encoder", dtype=dtype),
                          "transformer": SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer", dtype=dtype)},
                 tokenizers={"text_encoder": CLIPTokenizer.from_pretrained(text_dir, subfolder="tokenizer")},
                 scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
                 defaults=defaults, source=str(folder), corpus=corpus, world=world if world in WORLDS else "sd",
                 vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype) if (folder / "vae").is_dir() else None)


# Sampling defaults of a hub id / folder / file, as its stock diffusers pipeline has them (FLUX.1-schnell: 4 steps, no guidance)
PIPELINE_DEFAULTS = {"sd3": {"guidance_scale": 7.0, "num_inference_steps": 28},
                     "flux": {"guidance_scale": 3.5, "num_inference_steps": 28},
                     "schnell": {"guidance_scale": 0.0, "num_inference_steps": 4},
                     "pixart": {"guidance_scale": 4.5, "num_inference_steps": 20}}
SD_PIPELINE_DEFAULTS = {"guidance_scale": 7.5, "num_inference_steps": 50}


def _from_pipeline(pipe: Any, name: str, source: str) -> Model:
    from .families import denoiser_slots, detect

    parts = dict(pipe.components)
    den = parts[next(k for k in denoiser_slots() if parts.get(k) is not None)].config
    fam = detect(den, {k: v.config for k, v in parts.items() if k.startswith("text_encoder") and v is not None}).name
    if fam == "flux" and not getattr(den, "guidance_embeds", True):
        fam = "schnell"
    return _from_parts(parts, name, source=source, defaults=dict(PIPELINE_DEFAULTS.get(fam, SD_PIPELINE_DEFAULTS)))


def fit_threads() -> int:
    """Torch's CPU threads capped at the cores this process may really use (affinity), not the host's.

    A container or ``taskset`` may allow fewer cores than ``os.cpu_count()``; more threads than
    cores oversubscribe them (measured in ``docs/speed.md``). Returns the thread count in use.
    """
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()


def load_model(spec: str, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu") -> Model:
    """Load ``spec`` (see module docstring) and move it to ``device`` in ``dtype``."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelSpecError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    device = check_device(device)
    if str(device) == "cpu":
        fit_threads()
    if spec in RANDOM:  # built where it will run: SDXL's 3.5 B parameters initialise in seconds on a GPU
        from .replicas import build_random

        fam = spec.removeprefix("random-")
        model = _from_parts(build_random(fam, device=str(device)), spec, defaults=_dit_defaults(fam))
    else:
        model = _load(spec, dtype)
    for m in [*model.modules.values(), model.vae]:
        if m is not None and (m.dtype != dtype or m.device != torch.device(device)):
            m.to(device=device, dtype=dtype)
    if model.vae is not None and dtype == torch.float16 and getattr(model.vae.config, "force_upcast", False):
        model.vae.to(torch.float32)  # SDXL's VAE overflows in fp16
    if model.vae is not None and device.type != "cpu" and hasattr(model.vae, "enable_slicing"):
        # one image at a time through the VAE (diffusers' slicing): a 1024² fp32 decode holds
        # gigabytes per image, so a sweep's batch of 64 would not fit on the card otherwise
        model.vae.enable_slicing()
    return model


def _load(spec: str, dtype: torch.dtype) -> Model:
    if spec == "toy-dit":
        return _load_toy_dit(_toy_dit_dir(), dtype, spec)
    if spec in WORLDS and WORLDS.get(spec).model_dir() is not None:
        folder = WORLDS.get(spec).model_dir()
        if not (folder / "diffloc.json").exists():
            raise ModelSpecError(f"{spec} weights missing at {folder}; run `diffloc {spec} train` to make them")
        return _load_toy_folder(folder, dtype, spec)
    if spec in REPLICAS:
        from .replicas import build_replica

        parts = build_replica(spec.removeprefix("tiny-"))
        return _from_parts(parts, spec, defaults=_dit_defaults(spec.removeprefix("tiny-"), latent_size=8))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "diffloc.json").exists() and _read_defaults(path).get("arch") == "toy-dit":
            return _load_toy_dit(path, dtype, str(path))
        if (path / "diffloc.json").exists() and not (path / "vae").exists():
            return _load_toy_folder(path, dtype, str(path))
        if not (path / "model_index.json").exists():
            raise ModelSpecError(f"folder {spec} is not a diffusers model: no model_index.json (nor a toy diffloc.json)")
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, **_no_checker(json.loads((path / "model_index.json").read_text())))
        return _from_pipeline(pipe, str(path), str(path))
    if path.suffix in (".safetensors", ".ckpt"):
        if not path.exists():
            raise ModelSpecError(f"checkpoint file {spec} does not exist")
        return _load_single_file(path, dtype)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _load_hub(spec, dtype)
    if spec.startswith((".", "/", "~")) or os.sep in spec:
        raise ModelSpecError(f"model folder {spec} does not exist")
    raise ModelSpecError(
        f"unknown model spec {spec!r}; allowed: 'toy', {', '.join(repr(r) for r in REPLICAS + RANDOM)}, "
        "a local diffusers folder, a .safetensors/.ckpt file, or a hub id 'owner/name'"
    )


def _load_single_file(path: Path, dtype: torch.dtype) -> Model:
    """An A1111-style checkpoint through diffusers' single-file loader.

    diffusers infers the architecture from the file and needs that architecture's configs:
    it fetches them from the hub, or takes a local diffusers folder of the same family from
    ``DIFFLOC_SINGLE_FILE_CONFIG`` (offline use).
    """
    from diffusers import StableDiffusionPipeline

    config = os.environ.get("DIFFLOC_SINGLE_FILE_CONFIG")
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), dtype=dtype, safety_checker=None, config=config)
    except Exception as err:
        hint = "" if config else "; offline, set DIFFLOC_SINGLE_FILE_CONFIG to a local diffusers folder of the same family"
        raise ModelSpecError(f"cannot load single-file checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0][:120]}){hint}") from None
    return _from_pipeline(pipe, path.stem, str(path))


def _no_checker(index: dict) -> dict:
    """``safety_checker=None`` for pipelines that have one (SD 1.x); the DiT pipelines have none and warn about it."""
    return {"safety_checker": None} if "safety_checker" in index else {}


def _load_hub(spec: str, dtype: torch.dtype) -> Model:
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        index = DiffusionPipeline.load_config(spec, local_files_only=offline)
        pipe = DiffusionPipeline.from_pretrained(spec, dtype=dtype, local_files_only=offline, **_no_checker(index))
    except Exception as err:  # hub errors come in many classes; one line names the cause
        how = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else "it is neither cached nor reachable"
        raise ModelSpecError(f"cannot load hub model {spec!r}: {how} ({type(err).__name__})") from None
    return _from_pipeline(pipe, spec, spec)


def _from_parts(parts: dict, name: str, source: str | None = None, defaults: dict | None = None) -> Model:
    """A Model from pipeline components (``{family.denoiser: ..., 'text_encoder': ..., 'tokenizer': ..., ...}``)."""
    from .families import denoiser_slots, detect

    texts = {k: v.config for k, v in sorted(parts.items()) if k.startswith("text_encoder") and v is not None}
    denoiser = next(k for k in denoiser_slots() if parts.get(k) is not None)
    fam = detect(parts[denoiser].config, texts)
    return Model(
        name=name,
        arch=fam.name,
        modules={**{k: parts[k] for k in texts}, fam.denoiser: parts[denoiser]},
        tokenizers={k: parts[k.replace("text_encoder", "tokenizer")] for k in texts},
        scheduler=parts["scheduler"],
        vae=parts.get("vae"),
        defaults=defaults or {"guidance_scale": 7.5, "num_inference_steps": 10},
        source=source or name,
    )
