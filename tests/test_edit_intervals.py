"""Edit rates carry 95 % intervals and their n: Wilson's interval, the case bootstrap, summary files."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from diffloc.evaluate import bootstrap_cases, interval_text, rates_table, summarise, wilson


@pytest.mark.parametrize("k, n, lo, hi", [
    (74, 80, 0.8459, 0.9652),    # the many-edits generalization of the issue: about [0.85, 0.97]
    (81, 263, 0.2553, 0.3662),   # Wilson (1927) as tabulated for 81/263
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (48, 48, 0.9259, 1.0),       # "efficacy 1.000" on 48 images
])
def test_wilson_known_values(k, n, lo, hi):
    a, b = wilson(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)
    assert 0.0 <= a <= k / n <= b <= 1.0


def test_wilson_edges():
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(5, 4)
    narrow, wide = wilson(180, 200), wilson(18, 20)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_bootstrap_over_cases_keeps_a_case_together():
    # two cases, one always right, one always wrong: resampling cases spans [0, 1]
    v = pd.Series([1.0] * 10 + [0.0] * 10)
    c = pd.Series(["a"] * 10 + ["b"] * 10)
    lo, hi = bootstrap_cases(v, c)
    assert lo == 0.0 and hi == 1.0
    assert bootstrap_cases(pd.Series([1.0, 0.0]), pd.Series(["a", "a"])) == (0.5, 0.5)
    same = pd.Series(["x%d" % i for i in range(20)])
    lo2, hi2 = bootstrap_cases(v, same)
    assert 0.2 < lo2 < 0.5 < hi2 < 0.8, "independent images: a narrow interval around 0.5"


def _table() -> pd.DataFrame:
    rows = []
    for case in range(6):
        for split, n in (("edit", 9), ("positive", 5), ("negative", 5)):
            for i in range(n):
                ok = float((case + i) % 4 != 0)
                rows.append({"case": f"c{case}", "attribute": "colour", "method": "quickfix", "split": split, "prompt": f"p{i}",
                             "new": "", "seed": 0, "clip_success": ok, "gt_success": ok, "gt_others": 0.75 + 0.25 * ok})
    return pd.DataFrame(rows)


def test_summary_has_interval_and_n_for_every_rate():
    t = _table()
    s = summarise(t)["quickfix"]
    for name in ("efficacy", "generalization", "specificity", "gt_efficacy", "gt_generalization", "gt_specificity", "gt_others"):
        lo, hi = s[f"{name}_ci"]
        assert lo <= s[name] <= hi, name
        assert s[f"{name}_ci_cases"][0] <= s[name] <= s[f"{name}_ci_cases"][1]
    assert s["gt_efficacy_n"] == 6 * 9 and s["gt_generalization_n"] == 30 and s["gt_others_n"] == len(t)
    k = t[t.split == "edit"].gt_success.sum()
    assert s["gt_efficacy_ci"] == [round(x, 4) for x in wilson(k, 54)]
    table = rates_table(summarise(t))
    assert set(table.columns) >= {"method", "rate", "value", "lo", "hi", "n", "text"}
    assert table.n.notna().all() and table.lo.notna().all()
    assert interval_text(0.975, [0.9412, 0.99]) == "0.975 [0.941, 0.990]"


def test_write_summary_writes_json_tables_and_plot(tmp_path):
    from diffloc.evaluate_run import write_summary
    from diffloc.tracing.io import write_table

    write_table(_table(), tmp_path / "eval.parquet")
    result = write_summary(tmp_path, meta={"cases": "x.jsonl", "n_cases": 6, "seeds": 1})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["methods"]["quickfix"]["gt_efficacy_ci"] == result["methods"]["quickfix"]["gt_efficacy_ci"]
    assert on_disk["per_attribute_gt_ci"]["quickfix/colour"]["edit"]["n"] == 54
    assert (tmp_path / "rates.png").stat().st_size > 0
    md = (tmp_path / "rates.md").read_text()
    assert "| quickfix | gt_efficacy |" in md and "| 54 |" in md
    again = write_summary(tmp_path)  # from the folder alone: the meta is kept
    assert again["n_cases"] == 6 and again["methods"] == result["methods"]


def test_many_edits_summary_and_plot_carry_intervals(tmp_path):
    from diffloc.tracing.io import write_table
    from experiments.many_edits import summarise as many_summary

    t = _table()
    write_table(pd.concat([t.assign(method="unedited"), t.assign(method="oracle")]), tmp_path / "baselines.parquet")
    for n in (1, 4):
        write_table(t.assign(method="quickfix+preserve", n_edits=n, mode="batched", seconds=1.0), tmp_path / f"n{n}_batched.parquet")
    result = many_summary(tmp_path, "x.jsonl", 1, list(range(6)))
    run = result["runs"]["n4_batched"]
    assert run["gt_efficacy_n"] == 54 and run["gt_efficacy_ci"][0] <= run["gt_efficacy"] <= run["gt_efficacy_ci"][1]
    assert run["per_attribute_efficacy_ci"]["colour"]["n"] == 54
    assert result["baselines"]["oracle"]["gt_specificity_ci"]
    assert (tmp_path / "many_edits.png").stat().st_size > 0 and "(54)" in (tmp_path / "rates.md").read_text()
