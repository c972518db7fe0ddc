"""Contract test batteries, diffusers-style tester mixins: a newcomer's object passes these.

Usage (in a test module)::

    class TestMyExecutor(ExecutorContract):
        def make_executor(self):
            return MyExecutor()

    class TestMyEditor(EditorContract):
        editor_name = "myedit"          # registered in editing.editors.EDITORS

    class TestMyFamily(ArchitectureContract):
        def make_model(self):
            return load_model("tiny-myfamily")

Each battery asserts what the rest of diffloc relies on, against independent references
(a hooked forward pass for site order, the recorded hashes for undo, a plain loop for units).
"""
from __future__ import annotations

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
    """``run(units, fn, progress)`` calls ``fn`` once per unit and reports progress; errors surface."""

    def make_executor(self):
        raise NotImplementedError

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
    def model(self):
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
    def arch_model(self):
        return self.make_model()

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
