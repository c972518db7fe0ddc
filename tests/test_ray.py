"""Ray executor: a real local Ray with 2 workers gives the local table; killed workers lose nothing.

Each worker rebuilds the tiny fixture model and scorer from ``tracing.testing`` with the same
seed, so its weights equal the driver's and the tables must match exactly.
"""
from __future__ import annotations

import sys
from functools import partial

import pandas as pd
import pytest
import torch

from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer
from diffloc.tracing.trace_config import TraceConfig
from test_sweep import Interrupt, cut_after  # noqa: E402  (the sweep tests' interrupting bar)

PROMPTS = ("a photo of two [red] circles at the top on a plain background",)
FACTORIES = dict(model=partial(tiny_pixel_model, 0), scorer=partial(tiny_scorer, 0))


def _cfg(executor):
    return TraceConfig(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0, 1), num_inference_steps=3,
                       batch_size=48, executor=executor)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return tiny_pixel_model(0), tiny_scorer(0)


@pytest.fixture(scope="module")
def local_table(tmp_path_factory, models):
    return run_sweep(_cfg("local"), tmp_path_factory.mktemp("local"), model=models[0], scorer=models[1])


def _ray_sweep(out, models, **kw):
    return run_sweep(_cfg("ray"), out, model=models[0], scorer=models[1], executor_kw=dict(FACTORIES, num_workers=2, **kw))


def _stamps(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}


def _wait_dead(ray, workers, timeout=30.0):
    """Block until every killed actor answers with RayActorError, so no shard can appear afterwards.

    ``ray.kill`` is asynchronous: on a loaded machine a call made just after it may still be answered,
    so the actor is asked again until it is gone; still answering after ``timeout`` seconds fails."""
    import time

    from ray.exceptions import GetTimeoutError, RayActorError

    deadline = time.monotonic() + timeout
    for w in workers:
        while True:
            try:
                ray.get(w.info.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except RayActorError:
                break
            except GetTimeoutError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"a killed Ray worker still answered after {timeout:g} s")
            time.sleep(0.2)


def test_ray_table_equals_local(ray, tmp_path, models, local_table):
    import os

    seen = {}

    def look(n_done, workers):
        for w in workers:
            info = ray.get(w.info.remote())
            seen[info["pid"]] = info

    table = _ray_sweep(tmp_path / "ray", models, on_done=look)
    pd.testing.assert_frame_equal(table, local_table, check_exact=True)  # same numerics in other processes
    assert pd.read_parquet(tmp_path / "ray" / "trace.parquet").equals(table)
    assert len(seen) == 2 and os.getpid() not in seen, "two worker processes, not the driver"
    assert sum(i["units"] for i in seen.values()) == local_table.unit.nunique()
    assert all(i["models_loaded"] == 1 for i in seen.values()), "one model per worker, loaded once"
    assert all(i["threads"] == 1 for i in seen.values())


def test_killed_worker_loses_no_rows(ray, tmp_path, models, local_table):
    """ray.kill one of two workers mid-sweep: its unit is re-queued, the other worker finishes."""
    out = tmp_path / "kill1"
    before = {}

    def kill_one(n_done, workers):
        if n_done == 2:
            before.update(_stamps(out))
            ray.kill(workers[0])

    table = _ray_sweep(out, models, on_done=kill_one)
    pd.testing.assert_frame_equal(table, local_table, check_exact=True)
    assert len(before) >= 2
    after = _stamps(out)
    assert all(after[k] == v for k, v in before.items()), "a finished shard was rewritten"


def test_all_workers_killed_then_rerun_resumes(ray, tmp_path, models, local_table):
    """A sweep started locally, continued on Ray, all workers killed, re-run: same table."""
    out = tmp_path / "killall"
    with pytest.raises(Interrupt):  # executors share shards: one local unit, then Ray
        run_sweep(_cfg("local"), out, model=models[0], scorer=models[1], progress=cut_after(1))
    before = {}

    def kill_all(n_done, workers):
        if n_done == 2:
            for w in workers:
                ray.kill(w)
            _wait_dead(ray, workers)  # ray.kill is asynchronous: a worker may finish an (atomic) shard first
            before.update(_stamps(out))

    with pytest.raises(RuntimeError, match="all Ray workers died.*re-run"):
        _ray_sweep(out, models, on_done=kill_all)
    assert _stamps(out) == before and len(before) >= 3, "finished shards survive the kill"
    assert not (out / "trace.parquet").exists()
    table = _ray_sweep(out, models)
    pd.testing.assert_frame_equal(table, local_table, check_exact=True)
    after = _stamps(out)
    assert all(after[k] == v for k, v in before.items()), "a finished unit was recomputed"


def test_more_workers_than_cpus_is_one_line_error(ray, tmp_path, models):
    with pytest.raises(ValueError, match="need 5 CPU but the cluster has 2") as err:
        run_sweep(_cfg("ray"), tmp_path / "big", model=models[0], scorer=models[1], executor_kw=dict(FACTORIES, num_workers=5))
    assert "\n" not in str(err.value)


def test_worker_that_cannot_load_reraises_its_own_error(ray, tmp_path, models):
    bad = dict(FACTORIES, model=partial(tiny_pixel_model, "not-a-seed"))  # raises when the worker loads its model
    with pytest.raises(ValueError, match="invalid literal.*not-a-seed") as err:
        run_sweep(_cfg("ray"), tmp_path / "bad", model=models[0], scorer=models[1], executor_kw=bad)
    assert "\n" not in str(err.value)


def test_missing_ray_is_one_line_error(monkeypatch, tmp_path, capsys):
    from diffloc.cli.app import main
    from diffloc.tracing.errors import DifflocInputError
    from diffloc.tracing.executors import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DifflocInputError, match=r"pip install 'diffloc\[ray\]'") as err:
        import_ray()
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as code:
        main(["trace", "--attribute", "colour", "--executor", "ray", "--out", str(tmp_path / "x")])
    assert code.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --executor ray needs Ray: pip install 'diffloc[ray]' (or pip install ray)"


def test_cli_ray_with_default_model_and_scorer(ray, tmp_path):
    """No factories: workers load `toy` and resolve the default scorer ('auto') themselves."""
    from diffloc.cli.app import main
    from diffloc.tracing.io import read_meta, read_trace

    out = tmp_path / "toy_ray"
    main(["--quiet", "trace", "--attribute", "colour", "--executor", "ray", "--workers", "2", "--component", "unet",
          "--max-prompts", "1", "--seed", "0", "--steps", "2", "--batch-size", "12", "--no-plot", "--out", str(out)])
    table = read_trace(out / "trace.parquet")
    assert read_meta(out / "meta.json")["scorer"]["id"] == "diffloc-toy-openclip"
    assert set(table.scorer) == {"diffloc-toy-openclip"} and table.unit.nunique() >= 3
    assert table.gt_score.notna().all(), "the toy world's readers scored every row in the workers"
