"""Diffusion-transformer families: SD3/3.5 (MM-DiT), the toy world's MM-DiT, and their shared base.

Usage::

    from diffloc.tracing.families import FAMILIES
    sd3 = FAMILIES.get("sd3")
    cond = sd3.encode(model, sd3.tokenize(model, ["a red car"]), {})   # embeds [1, 77 + 256, D_t5], pooled [1, P_l + P_g]
    v = sd3.denoise(model, x, t, cond, step)                           # velocity [B, C, h, w]

Each family mirrors its stock diffusers pipeline (``StableDiffusion3Pipeline``; the toy-dit has
no stock pipeline, see ``experiments/toy/train_dit.py``): encoding, the negative prompt ""
encoded (never zeros), flow matching with ``FlowMatchEulerDiscreteScheduler`` set up as the
pipeline sets it up, CFG when ``guidance_scale > 1``. FLUX and PixArt live in :mod:`.flux` and
:mod:`.pixart`; site tables in :mod:`.dit_sites`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..hooks import hooks
from ..sites import Site
from .base import Conditioning, PromptReader, cfg_get, union_positions
from .dit_sites import dit_site_table, is_t5, mmdit_walk
from .joint_attention import install_split, joint_attentions


def calculate_shift(seq_len: int, cfg: Any) -> float:
    """diffusers' ``calculate_shift``: mu linear in the image sequence length (FLUX, dynamic shifting)."""
    base, top = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    b_shift, m_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (m_shift - b_shift) / (top - base)
    return seq_len * m + (b_shift - m * base)


@dataclass(frozen=True)
class DiTFamily:
    """What every DiT family shares: detection by denoiser class, tokenization, scheduler set-up."""

    name: str
    published_key: str | None
    class_name: str                       # the denoiser's diffusers class
    text_components: tuple[str, ...]
    pipeline: str = ""
    t5_length: int = 256                  # tokens the pipeline pads T5 prompts to (max_sequence_length)
    clip_prefixes: Mapping[str, str] | None = None   # 'text_model.' for CLIPTextModelWithProjection towers
    required: int = 1                     # leading text components a model must have (SD3: both CLIPs; T5 optional)
    denoiser: str = "transformer"
    screen_scope: str = "denoiser"        # what `diffloc bench` screens time: every block state of the transformer
    slice_sites: bool = False             # MM-DiT: open the text->image slice of joint attention as sites
    stream_blocks: tuple[str, ...] = ()   # module lists of blocks that read a text stream, in execution order

    # ---------------------------------------------------------------- structure
    def prepare(self, model) -> None:
        """Nothing to install on the modules (MM-DiT families may open the text->image slice)."""

    def texts_match(self, text_configs: Mapping[str, Any]) -> bool:
        return set(text_configs) <= set(self.text_components) and set(self.text_components[: self.required]) <= set(text_configs)

    def matches(self, denoiser_config: Any, text_configs: Mapping[str, Any]) -> bool:
        return cfg_get(denoiser_config, "_class_name") == self.class_name and self.texts_match(text_configs)

    def mismatch(self, denoiser_config: Any, text_configs: Mapping[str, Any]) -> str | None:
        if cfg_get(denoiser_config, "_class_name") != self.class_name:
            return None
        return f"{self.name} expects text encoders {', '.join(self.text_components)}, got {', '.join(sorted(text_configs))}"

    def walk(self):
        return mmdit_walk

    def site_table(self, denoiser_config: Any, text_configs: Mapping[str, Any]):
        return dit_site_table(self.name, denoiser_config, text_configs, self.walk(), self.clip_prefixes,
                              extra=("context_embedder", "proj_out"))

    # ---------------------------------------------------------------- conditioning
    def text_length(self, model, component: str) -> int:
        """Tokens per prompt fed to ``component`` (77 for CLIP, ``t5_length`` for T5)."""
        return self.t5_length if is_t5(model.modules[component].config) else model.tokenizer_for(component).model_max_length

    def causal_text(self, model, component: str) -> bool:
        """CLIP towers attend causally; T5's encoder attends both ways (a token before the word changes too)."""
        return not is_t5(model.modules[component].config)

    def sequence_offsets(self, model) -> dict[str, int]:
        """Where each encoder's tokens start in ``Conditioning.embeds`` (encoders absent: not in the sequence).
        MM-DiT: the CLIP towers side by side along features at 0, T5 after them; others override."""
        clip = [c for c in self.text_components if c in model.modules and not is_t5(model.modules[c].config)]
        t5 = [c for c in self.text_components if c in model.modules and is_t5(model.modules[c].config)]
        start = self.text_length(model, clip[0]) if clip else 0
        return {**{c: 0 for c in clip}, **{c: start for c in t5}}

    def sequence_positions(self, model, positions: Mapping[str, Any]) -> tuple[int, ...]:
        """Positions in the conditioning sequence of the given per-encoder token positions."""
        return union_positions(positions, self.sequence_offsets(model))

    def kv_readers(self, model) -> list[PromptReader]:
        """Every joint attention, whose text-stream key and value projections (``add_k_proj``, ``add_v_proj``) read the prompt."""
        comp = self.denoiser
        return [PromptReader(Site(comp, path), "joint_kv", (Site(comp, f"{path}.add_k_proj"), Site(comp, f"{path}.add_v_proj")))
                for path, _ in joint_attentions(model.denoiser)]

    def stream_readers(self, model) -> list[PromptReader]:
        """Every block of ``stream_blocks`` in execution order; block ``i``'s text-stream input is the output of
        ``context_embedder`` (i = 0) or of the previous block's text stream (``@text``)."""
        comp = self.denoiser
        paths = [f"{name}.{i}" for name in self.stream_blocks for i in range(len(getattr(model.denoiser, name)))]
        feeds = ["context_embedder"] + [f"{p}@text" for p in paths[:-1]]
        return [PromptReader(Site(comp, p), "text_stream", (Site(comp, f),)) for p, f in zip(paths, feeds)]

    def tokenize(self, model, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids [B, L] per text encoder, padded to the length the family's pipeline uses."""
        out = {}
        for c in self.text_components:
            if c in model.modules:
                tok = model.tokenizer_for(c)
                out[c] = tok(texts, padding="max_length", max_length=self.text_length(model, c), truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        return out

    def uncond(self, model, batch: int) -> Conditioning:
        """The negative prompt "" encoded, as the DiT pipelines do (never zeros)."""
        return self.encode(model, self.tokenize(model, [""]), {}).expand(batch)

    def guidance(self, model, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    # ---------------------------------------------------------------- sampling
    def latent_shape(self, model, batch: int, size: int | None = None) -> tuple[int, ...]:
        size = size or self.sample_size(model)
        return (batch, int(model.denoiser.config.in_channels), size, size)

    def sample_size(self, model) -> int:
        return int(model.defaults.get("latent_size") or cfg_get(model.denoiser.config, "sample_size", 128))

    def pack(self, model, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def image_seq_len(self, model, latents: torch.Tensor) -> int:
        p = int(cfg_get(model.denoiser.config, "patch_size", 1))
        return (latents.shape[-2] // p) * (latents.shape[-1] // p)

    def prepare_scheduler(self, scheduler, n_steps: int, model, latents: torch.Tensor) -> None:
        """``set_timesteps`` as the pipeline calls it (mu from the image sequence length when the
        scheduler shifts dynamically)."""
        kw = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            kw["mu"] = calculate_shift(self.image_seq_len(model, latents), scheduler.config)
        scheduler.set_timesteps(n_steps, device=model.device, **kw)

    def stock_pipeline(self, model):
        """The family's stock diffusers pipeline over the model's own components."""
        import diffusers

        if not self.pipeline:
            raise NotImplementedError(f"{self.name} has no stock diffusers pipeline")
        kw = {c: model.modules.get(c) for c in self.text_components}
        kw.update({c.replace("text_encoder", "tokenizer"): model.tokenizers.get(c) for c in self.text_components})
        return getattr(diffusers, self.pipeline)(transformer=model.denoiser, vae=model.vae, scheduler=model.scheduler, **kw)


@dataclass(frozen=True)
class MMDiTFamily(DiTFamily):
    """SD3/3.5 (CLIP-L + CLIP-G + T5) and the toy world's MM-DiT (one CLIP tower)."""

    def encode(self, model, ids: Mapping[str, torch.Tensor], hook_fns: dict) -> Conditioning:
        """SD3: both CLIP towers' penultimate hidden states concatenated, zero-padded to T5's width,
        T5 appended along the sequence: embeds [B, 77 + L_t5, D_t5]; pooled = CLIP-L ⊕ CLIP-G
        projections [B, P_l + P_g]. Toy: last_hidden_state [B, 77, D], pooled = pooler_output [B, D]."""
        dev = model.device
        with hooks(model.modules, hook_fns):
            if len(self.text_components) == 1:
                out = model.modules["text_encoder"](ids["text_encoder"].to(dev))
                return Conditioning(out.last_hidden_state, pooled=out.pooler_output)
            one = model.modules["text_encoder"](ids["text_encoder"].to(dev), output_hidden_states=True)
            two = model.modules["text_encoder_2"](ids["text_encoder_2"].to(dev), output_hidden_states=True)
            t5 = self._t5(model, ids, one[0].shape[0])  # [B, L_t5, D_t5]
        clip = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1)  # [B, 77, D_l + D_g]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning(torch.cat([clip, t5.to(clip.dtype)], dim=-2), pooled=torch.cat([one[0], two[0]], dim=-1))

    def _t5(self, model, ids, batch: int) -> torch.Tensor:
        if "text_encoder_3" not in model.modules:  # SD3 without T5: zeros, as the pipeline
            width = int(model.denoiser.config.joint_attention_dim)
            return torch.zeros(batch, self.t5_length, width, dtype=model.dtype, device=model.device)
        return model.modules["text_encoder_3"](ids["text_encoder_3"].to(model.device))[0]

    def prepare(self, model) -> None:
        """With ``slice_sites``: open every joint attention's text->image slice as a site
        (``...attn.txt2img``, :mod:`.joint_attention`). Off for full-size SD3: the split computes
        attention probabilities explicitly ([B, H, N, N] per layer), which SDPA never materialises."""
        if self.slice_sites:
            install_split(model.denoiser)

    def site_table(self, denoiser_config: Any, text_configs: Mapping[str, Any]):
        table = super().site_table(denoiser_config, text_configs)
        if not self.slice_sites:
            return table
        sites = []
        for s in table.denoiser:  # the split runs the slice just before the image stream's output projection
            if s.path.endswith(".attn.to_out.0"):
                sites.append(Site(s.component, s.path.removesuffix(".to_out.0") + ".txt2img"))
            sites.append(s)
        return dataclasses.replace(table, denoiser=tuple(sites))

    def denoise(self, model, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int) -> torch.Tensor:
        """Velocity [B, C, h, w] of the SD3Transformer2DModel at flow time ``t`` (0..1000)."""
        return model.denoiser(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=cond.embeds,
                              pooled_projections=cond.pooled, return_dict=False)[0]


SD3 = MMDiTFamily("sd3", "sd3", "SD3Transformer2DModel", ("text_encoder", "text_encoder_2", "text_encoder_3"),
                  pipeline="StableDiffusion3Pipeline", t5_length=256, required=2,
                  clip_prefixes={"text_encoder": "text_model.", "text_encoder_2": "text_model."},
                  stream_blocks=("transformer_blocks",))
TOY_DIT = MMDiTFamily("toy-dit", None, "SD3Transformer2DModel", ("text_encoder",), slice_sites=True, stream_blocks=("transformer_blocks",))
