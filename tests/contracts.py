"""Contract test batteries, diffusers-style tester mixins: a newcomer's object passes these.

Usage (in a test module)::

    class TestMyExecutor(ExecutorContract):
        executor_name = "mine"          # registered in tracing.executors.EXECUTORS
        def make_executor(self, **options):
            return MyExecutor(**options)

    class TestMyMethod(TraceMethodContract):
        method_name = "mine"            # registered in tracing.methods.TRACE_METHODS
        config = {"component": "text_encoder"}   # TraceConfig fields the method needs

    class TestMyMetric(MetricContract):
        metric_name = "mine"            # registered in tracing.metrics.METRICS

    class TestMyWorld(WorldContract):
        world_name = "mine"             # registered in tracing.worlds.WORLDS (or its entry point)

    class TestMyEditor(EditorContract):
        editor_name = "myedit"          # registered in editing.editors.EDITORS

    class TestMyFamily(ArchitectureContract):
        def make_model(self):
            return load_model("tiny-myfamily")

Each battery asserts what the rest of diffloc relies on, against independent references
(a hooked forward pass for site order, the recorded hashes for undo, a plain loop for units).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffloc.tracing.hooks import hook_count, hooks
from diffloc.tracing.sampler import encode, initial_latents
from diffloc.tracing.testing import Touch


class Count:
    def __init__(self):
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


class ExecutorContract:
    """``run(units, fn, progress)`` calls ``fn`` once per unit and reports progress; errors surface;
    options are declared, and an undeclared (mistyped) one is a one-line input error."""

    executor_name: str = ""

    def make_executor(self, **options):
        raise NotImplementedError

    def test_registered_and_an_executor(self):
        from diffloc.tracing.executors import EXECUTORS, Executor

        cls = EXECUTORS.get(self.executor_name)
        assert isinstance(self.make_executor(), Executor)
        # the sweep passes this one to every executor
        assert "gpu" in cls.options, cls.options

    def test_an_undeclared_option_is_a_one_line_input_error(self):
        from diffloc.tracing.errors import DifflocInputError

        with pytest.raises(DifflocInputError, match="no option 'gpus'; allowed: ") as err:
            self.make_executor(gpus=True)
        assert "\n" not in str(err.value) and "gpu" in str(err.value)

    def test_every_unit_runs_exactly_once(self, tmp_path):
        units = [f"u{i:02d}" for i in range(7)]
        bar = Count()
        self.make_executor().run(units, Touch(str(tmp_path)), progress=bar)
        assert sorted(p.name for p in tmp_path.iterdir()) == units
        assert all(p.read_text() == "1" for p in tmp_path.iterdir())
        assert bar.n == len(units)

    def test_no_units_is_a_no_op(self, tmp_path):
        self.make_executor().run([], Touch(str(tmp_path)))
        assert list(tmp_path.iterdir()) == []

    def test_a_failing_unit_raises_its_own_error(self, tmp_path):
        with pytest.raises(ValueError, match="u03 failed on purpose"):
            self.make_executor().run([f"u{i:02d}" for i in range(5)], Touch(str(tmp_path), fail_on="u03"))


class EditorContract:
    """A registered editor edits weights of its trace state's kind and undoes bit-exactly."""

    editor_name: str = ""
    options: dict = {}

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        from diffloc.tracing.testing import tiny_pixel_model

        return tiny_pixel_model(0)

    def _weights(self, model):
        return {f"{c}.{n}": p.detach().clone() for c, m in model.modules.items() for n, p in m.named_parameters()}

    def test_registered_with_a_state_kind(self):
        from diffloc.editing.editors import EDITORS

        editor = EDITORS.get(self.editor_name)
        component, kind = editor.state.split("/")
        assert component in ("text_encoder", "text_encoder_2", "unet") and kind

    def test_edit_changes_only_its_kind_and_undo_is_bit_exact(self, model):
        from diffloc.editing.editors import EDITORS
        from diffloc.editing.records import undo_edit
        from diffloc.tracing.sites import Site

        editor = EDITORS.get(self.editor_name)
        before = self._weights(model)
        records = editor.apply(model, "red", "blue", **self.options)
        try:
            assert records, "an edit returns its records"
            after = self._weights(model)
            changed = {k for k in before if not torch.equal(before[k], after[k])}
            assert changed, "the edit changed no weight"
            for rec in records:
                site = Site.parse(rec.site)
                assert site.component == editor.state.split("/")[0]
        finally:
            for rec in reversed(records):
                undo_edit(model, rec)
        restored = self._weights(model)
        assert all(torch.equal(before[k], restored[k]) for k in before), "undo is not bit-exact"
        assert hook_count(model.modules) == 0


class ArchitectureContract:
    """A family's site table resolves, and its UNet order is the execution order of a forward pass."""

    def make_model(self):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def arch_model(cls):
        return cls().make_model()

    def test_every_site_resolves(self, arch_model):
        for site in arch_model.sites.all_sites():
            arch_model.module(site)

    def test_denoiser_sites_fire_in_table_order(self, arch_model):
        """One denoiser call through the family fires every denoiser site, in the table's order."""
        m = arch_model
        seen: list = []
        fns = {s: (lambda mod, i, o, s=s: seen.append(s) if s not in seen else None) for s in m.sites.denoiser}
        x = initial_latents(m, torch.Generator().manual_seed(0), batch=2)
        cond = encode(m, ["a red circle", "a blue square"])
        with torch.no_grad(), hooks(m.modules, fns):
            m.family.denoise(m, x, torch.tensor(10), cond, 0)
        assert seen == list(m.sites.denoiser)

    def test_text_layers_match_the_config(self, arch_model):
        for comp, n in arch_model.sites.text_layers.items():
            assert n == arch_model.modules[comp].config.num_hidden_layers


PROMPT = "a photo of two [red] circles at the top on a plain background"


class TraceMethodContract:
    """The stable protocol every trace method keeps: ``name``; ``plan(cfg, model, prompts, n_steps)`` gives
    units with unique keys, the same on every call (resume skips a unit by its key); ``run_unit(unit, ctx,
    cfg)`` gives ``(table, strip)``: rows 0 and 1 the two references (kinds ``clean`` and ``corrupted``, in
    either order: LocoGen's row 0 is its original prompt), every row of the unit's prompt and seed, effects
    against the two references, and a strip the sweep can store. On the tiny model."""

    method_name: str = ""
    config: dict = {}  # TraceConfig fields this method needs (component, options) to stay cheap

    @pytest.fixture(scope="class")
    @classmethod
    def traced(cls, tmp_path_factory):
        from diffloc.tracing.methods import TRACE_METHODS
        from diffloc.tracing.sweep import unit_context
        from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer
        from diffloc.tracing.trace_config import TraceConfig

        model = tiny_pixel_model(0)
        cfg = TraceConfig(**{"model": "tiny", "attribute": "colour", "method": cls.method_name, "seeds": (0,),
                             "num_inference_steps": 2, "prompts": (PROMPT,), "batch_size": 512, **cls.config})
        ctx = unit_context(cfg, model, tiny_scorer(0))
        method = TRACE_METHODS.get(cls.method_name)
        units = method.plan(cfg, model, ctx.prompts, ctx.scfg.num_inference_steps)
        assert units, "the plan holds no unit"
        table, strip = method.run_unit(units[0], ctx, cfg)
        return {"method": method, "cfg": cfg, "ctx": ctx, "units": units, "table": table, "strip": strip,
                "tmp": tmp_path_factory.mktemp(cls.method_name)}

    def test_registered_under_its_name(self, traced):
        assert traced["method"].name == self.method_name

    def test_plan_keys_are_unique_and_stable(self, traced):
        keys = [u.key for u in traced["units"]]
        assert all(isinstance(k, str) and k for k in keys) and len(set(keys)) == len(keys), keys
        again = traced["method"].plan(traced["cfg"], traced["ctx"].model, traced["ctx"].prompts, traced["ctx"].scfg.num_inference_steps)
        assert [u.key for u in again] == keys

    def test_rows_0_and_1_are_the_clean_and_corrupted_references(self, traced):
        df = traced["table"]
        assert isinstance(df, pd.DataFrame) and len(df) >= 3, "two references and at least one traced row"
        assert sorted(df.kind[:2]) == ["clean", "corrupted"]
        assert not df.kind[2:].isin(["clean", "corrupted"]).any()
        assert df.prompt_index.nunique() == 1 and df.seed.nunique() == 1  # one prompt x seed pair per unit
        clean, corrupted = (int(np.flatnonzero(df.kind[:2].to_numpy() == k)[0]) for k in ("clean", "corrupted"))
        for m in (c[: -len("_score")] for c in df.columns if c.endswith("_score")):
            # every row's effect is measured against the unit's two references
            assert (df[f"{m}_clean"] == df[f"{m}_score"].iloc[clean]).all(), m
            assert (df[f"{m}_corrupted"] == df[f"{m}_score"].iloc[corrupted]).all(), m
        assert "clip_score" in df.columns

    def test_the_strip_is_what_the_sweep_stores(self, traced):
        from diffloc.tracing.io import write_strip

        strip = traced["strip"]
        write_strip(strip["images"], strip["rows"], traced["tmp"] / "strip.npz")
        assert len(strip["images"]) == len(strip["rows"])
        assert set(np.asarray(strip["rows"]).tolist()) <= set(range(len(traced["table"])))

    def test_a_unit_run_twice_gives_the_same_table(self, traced):
        """Resume and executors rely on it: a unit's shard does not depend on when or where it ran."""
        again, _ = traced["method"].run_unit(traced["units"][0], traced["ctx"], traced["cfg"])
        scores = [c for c in again.columns if c.endswith("_score")]
        pd.testing.assert_frame_equal(again[["kind", *scores]], traced["table"][["kind", *scores]])


class MetricContract:
    """A registered metric factory gives, for the tiny model, a :class:`Metric` (or None where it does not
    apply): one finite float score per image, each image scored on its own (a batch gives the scores of its
    images alone), and a graph back to the images when it says it is differentiable."""

    metric_name: str = ""
    applies: bool = True  # the factory gives a metric for the tiny (toy-world) model

    @pytest.fixture(scope="class")
    @classmethod
    def metric(cls):
        from diffloc.tracing.metrics import METRICS
        from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer

        return METRICS.get(cls.metric_name)(tiny_pixel_model(0), tiny_scorer(0), "colour")

    def _images(self, n: int = 3) -> torch.Tensor:
        return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def test_a_metric_with_its_declared_fields(self, metric):
        from diffloc.tracing.metrics import Metric

        if not self.applies:
            assert metric is None
            return
        assert isinstance(metric, Metric)
        assert metric.name.isidentifier(), "it names the table columns <name>_score and effect_<name>"
        assert isinstance(metric.model_id, str) and metric.model_id and isinstance(metric.formula, str) and metric.formula
        assert isinstance(metric.differentiable, bool)

    def test_one_finite_score_per_image_each_on_its_own(self, metric):
        if not self.applies:
            assert metric is None
            return
        imgs, texts = self._images(), ["a photo of two red circles at the top"] * 3
        with torch.no_grad():
            batch = metric(imgs, texts)
            alone = torch.cat([metric(imgs[i : i + 1], texts[i : i + 1]) for i in range(3)])
        assert isinstance(batch, torch.Tensor) and batch.shape == (3,) and batch.dtype.is_floating_point
        assert torch.isfinite(batch).all()
        torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-4)

    def test_differentiable_means_a_gradient_reaches_the_images(self, metric):
        if not self.applies:
            assert metric is None
            return
        imgs = self._images(2).requires_grad_(True)
        with torch.enable_grad():
            score = metric(imgs, ["a red circle", "a blue square"])
        if not metric.differentiable:  # it says so: no graph leads back to the images
            assert not score.requires_grad
            return
        with torch.enable_grad():
            score.sum().backward()
        assert imgs.grad is not None and imgs.grad.shape == imgs.shape and torch.isfinite(imgs.grad).all()


class WorldContract:
    """A registered world provides what :class:`tracing.worlds.World` declares: attributes with prompt sets,
    a caption corpus, and readers that agree with its caption parser where it says it has them."""

    world_name: str = ""

    @pytest.fixture(scope="class")
    @classmethod
    def world(cls):
        from diffloc.tracing.worlds import WORLDS

        return WORLDS.get(cls.world_name)

    def test_registered_under_its_name_as_a_world(self, world):
        from diffloc.tracing.worlds import World

        assert isinstance(world, World) and world.name == self.world_name
        assert world.attributes and len(set(world.attributes)) == len(world.attributes)
        assert isinstance(world.has_readers, bool) and isinstance(world.has_scorer, bool)

    def test_every_attribute_has_marked_prompts(self, world):
        from diffloc.tracing.prompts import MarkedPrompt

        for attribute in world.attributes:
            path = Path(world.prompt_dir) / f"{attribute}.txt"
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            assert lines, f"{path} holds no prompt"
            for line in lines:
                assert MarkedPrompt.parse(line).marked  # one [marked] span each

    def test_the_corpus_is_captions(self, world):
        corpus = world.corpus()
        assert corpus and all(isinstance(c, str) and c.strip() and not c.startswith("#") for c in corpus)

    def test_model_dir_scorer_and_cli_are_present_or_none(self, world):
        model_dir = world.model_dir()
        assert model_dir is None or Path(model_dir).is_dir()
        app = world.cli()
        assert app is None or callable(app), "a typer app mounted as `diffloc <name>`, or None"
        if not world.has_scorer:
            assert world.scorer() is None

    def test_readers_agree_with_the_caption_parser_or_refuse(self, world):
        from diffloc.tracing.errors import DifflocInputError

        caption = world.corpus()[0]
        if not world.has_readers:
            with pytest.raises(DifflocInputError):
                world.parse_caption(caption)
            with pytest.raises(DifflocInputError):
                world.read(torch.zeros(3, 32, 32))
            return
        parsed = world.parse_caption(caption)
        assert parsed and set(parsed) <= set(world.attributes)
        image = self.render(caption)
        assert image is not None, "a world with readers gives its contract a renderer (override render)"
        read = world.read(image)
        assert {a: read[a] for a in parsed} == parsed, (caption, read)

    def render(self, caption: str):
        """An image the world's readers must read as ``caption`` says (None: not checked)."""
        return None
