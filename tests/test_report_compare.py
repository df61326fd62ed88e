"""The comparison report on runs written straight into a temporary MLflow store, with training's names and
params, and values chosen so every number can be worked out by hand."""

from __future__ import annotations

import csv
import itertools
import math

import matplotlib.image
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from optsweep.report import compare
from optsweep.report.__main__ import main
from optsweep.report.plots import OPTIMIZER_COLOURS, colour_distance, colours_for, pareto_front

TOKENS_PER_STEP = 16 * 128  # quickstart: 16 sequences x 128 tokens
T975_2 = 4.302653  # t(0.975, 2): three seeds
_STARTS = itertools.count(1_700_000_000_000, 1_000_000)  # runs start in the order they are logged


def _log_run(client, experiment_id, optimizer, *, seed, final, lr=1e-3, start=None,
             status="FINISHED", model="llama_tiny", method=None, steps=(0, 50, 100), memory=12e6, state=8e6,
             tags=None, params=None, diverged=False):
    """A run as training logs it; its val/loss falls by 2 per evaluation to ``final`` (evaluations 10 s
    apart), tokens/seen grows by TOKENS_PER_STEP per step."""
    start = next(_STARTS) if start is None else start
    run = client.create_run(experiment_id, start_time=start, run_name=f"{optimizer}-{model}", tags={
        "optimizer": optimizer, "model": model, "data": "sample", "seed": str(seed),
        **({"method": method} if method else {}), **(tags or {})})
    rid = run.info.run_id
    losses = [final + 2.0 * (len(steps) - 1 - i) for i in range(len(steps))]
    if diverged:
        losses[-1] = math.nan
    metrics = [Metric("val/loss", v, start + 10_000 * i, s) for i, (s, v) in enumerate(zip(steps, losses))]
    metrics += [Metric("val/ppl", math.exp(v), start + 10_000 * i, s) for i, (s, v) in enumerate(zip(steps, losses))]
    metrics += [Metric("tokens/seen", float(s * TOKENS_PER_STEP), start + s, s) for s in range(10, steps[-1] + 1, 10)]
    metrics += [Metric("throughput/tokens_per_s", v, start + i, 10 * (i + 1))
                for i, v in enumerate((100.0, 1000.0, 1100.0, 1200.0))]
    metrics += [Metric("optimizer/state_bytes", state, start, 1), Metric("memory/model_optimizer_bytes", memory, start, 1),
                Metric("model/params", 1e6, start, 0)]
    base = {"optimizer.lr": lr, "optimizer.name": optimizer, "seed": seed, "data.seed": seed, "init_seed": seed,
            "model.name": model, "train.max_steps": steps[-1], "task_name": "quickstart",
            "paths.run_dir": f"/tmp/runs/{rid}", "callbacks.checkpoint.dirpath": f"/tmp/ck/{seed}"}
    client.log_batch(rid, metrics=metrics,
                     params=[Param(k, str(v)) for k, v in {**base, **(params or {})}.items()])
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """quickstart: adamw lr 1e-3 on seeds 0,1,2 (3.0, 3.1, 3.2) and lr 3e-3 on seed 0 (3.5); scale lr 1e-3 on
    seeds 0,1,2 (2.9, 3.0, 3.1) and lr 1e-2 on seed 0 (3.05); sgd diverged at lr 1 (FAILED) and fine at 0.1;
    a RUNNING adamw run; a sweep parent without tags. Another experiment with one llama_60m run."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    quick = client.create_experiment("quickstart", artifact_location=str(tmp / "artifacts"))
    other = client.create_experiment("other", artifact_location=str(tmp / "artifacts-other"))
    ids = {}
    for seed, final in enumerate((3.0, 3.1, 3.2)):
        ids[f"adamw{seed}"] = _log_run(client, quick, "adamw", seed=seed, final=final)
    ids["adamw_hi"] = _log_run(client, quick, "adamw", seed=0, final=3.5, lr=3e-3)
    for seed, final in enumerate((2.9, 3.0, 3.1)):
        ids[f"scale{seed}"] = _log_run(client, quick, "scale", seed=seed, final=final, memory=9e6, state=1e6)
    ids["scale_hi"] = _log_run(client, quick, "scale", seed=0, final=3.05, lr=1e-2, memory=9e6, state=1e6)
    ids["sgd_bad"] = _log_run(client, quick, "sgd", seed=0, final=9.0, lr=1.0, status="FAILED", diverged=True)
    ids["sgd"] = _log_run(client, quick, "sgd", seed=0, final=4.0, lr=0.1, memory=8e6, state=0.0)
    ids["running"] = _log_run(client, quick, "adamw", seed=7, final=1.0, status="RUNNING")
    parent = client.create_run(quick, run_name="sweep-parent")
    client.set_terminated(parent.info.run_id, "FINISHED")
    ids["other"] = _log_run(client, other, "adamw", seed=0, final=2.5, model="llama_60m", memory=3.5e8, state=2.3e8)
    return {"uri": uri, "client": client, "ids": ids, "tmp": tmp}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return compare.build_report(tracking_uri=store["uri"], experiments=["quickstart"], baseline="adamw",
                                out=tmp_path_factory.mktemp("report"))


def _csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_cells_are_runs_differing_only_in_seed_and_the_best_configuration_stands(report, store):
    rows = {r["method"]: r for r in _csv(report.out / "cells.csv")}
    assert set(rows) == {"adamw", "scale", "sgd"}
    adamw = rows["adamw"]
    assert adamw["n_seeds"] == "3" and adamw["seeds"] == "0 1 2" and float(adamw["lr"]) == 1e-3
    assert adamw["configs_tried"] == "2"  # lr 1e-3 (mean 3.1) beat lr 3e-3 (3.5)
    assert float(adamw["val_loss_mean"]) == pytest.approx(3.1)
    # s = 0.1: 3.1 -+ 4.302653 * 0.1 / sqrt(3)
    assert float(adamw["val_loss_ci_low"]) == pytest.approx(3.1 - T975_2 * 0.1 / math.sqrt(3), abs=1e-6)
    assert float(adamw["val_loss_ci_high"]) == pytest.approx(3.1 + T975_2 * 0.1 / math.sqrt(3), abs=1e-6)
    ppl = [math.exp(v) for v in (3.0, 3.1, 3.2)]
    assert float(adamw["val_ppl_mean"]) == pytest.approx(sum(ppl) / 3)
    assert set(adamw["run_ids"].split()) == {store["ids"][f"adamw{i}"] for i in range(3)}
    # scale: lr 1e-3 (mean 3.0) beats lr 1e-2 (one seed, 3.05)
    assert float(rows["scale"]["val_loss_mean"]) == pytest.approx(3.0) and float(rows["scale"]["lr"]) == 1e-3
    # sgd: the diverged lr loses; one seed has no interval
    assert rows["sgd"]["n_seeds"] == "1" and rows["sgd"]["val_loss_ci_low"] == ""
    assert "one trial chosen among several" in rows["sgd"]["interval_from"]
    assert any("left out 1 run(s)" in n and "1 RUNNING" in n for n in report.notes)
    per_run = _csv(report.out / "runs.csv")
    assert sorted(r["val_loss"] for r in per_run if r["method"] == "adamw") == ["3.0", "3.1", "3.2"]


def test_pairwise_welch_holm_calls_a_tie_a_tie(report):
    (pair,) = [p for p in report.pairwise if p.method == "scale"]
    # a = 2.9, 3.0, 3.1 vs b = 3.0, 3.1, 3.2: difference -0.1, t = -0.1 / sqrt(2 * 0.01 / 3), df = 4
    t = 0.1 / math.sqrt(2 * 0.01 / 3)
    theta = math.atan(t / 2)
    p = 1 - math.sin(theta) * (1 + math.cos(theta) ** 2 / 2)
    assert pair.difference == pytest.approx(-0.1) and pair.p == pytest.approx(p, rel=1e-6)
    assert pair.p_holm == pytest.approx(p, rel=1e-6)  # sgd is untested: one pair corrected
    assert pair.verdict.startswith("tie")
    (sgd,) = [p for p in report.pairwise if p.method == "sgd"]
    assert sgd.p is None and "untested" in sgd.verdict
    text = (report.out / "report.md").read_text()
    assert "| scale | llama_tiny | adamw | -0.1000 |" in text and "tie (Holm p" in text


def test_sensitivity_budget_fairness(report):
    sens = {r.method: r for r in report.sensitivity}
    assert sens["sgd"].divergence_rate == 0.5 and sens["adamw"].divergence_rate == 0.0
    # scale: best 3.0 at 1e-3; 3.05 at 1e-2 is within 2% (3.06): one decade
    assert sens["scale"].robustness_decades == pytest.approx(1.0)
    # adamw: 3.5 at 3e-3 is out: zero
    assert sens["adamw"].robustness_decades == 0.0
    assert sens["sgd"].profile == [(0.1, 4.0), (1.0, math.inf)]
    budget = {r.method: r for r in report.budget}
    # adamw trials 3.0, 3.1, 3.2, 3.5: k=1 mean 3.2; k=2: (3*3.0 + 2*3.1 + 1*3.2) / 6
    assert budget["adamw"].expected[1] == pytest.approx(3.2)
    assert budget["adamw"].expected[2] == pytest.approx((9.0 + 6.2 + 3.2) / 6)
    assert budget["adamw"].expected[4] == 3.0 and 8 not in budget["adamw"].expected
    assert budget["sgd"].expected == {1: math.inf, 2: 4.0}
    fair = {r.method: r for r in report.fairness}
    assert (fair["adamw"].lr_low, fair["adamw"].lr_high, fair["adamw"].trials) == (1e-3, 3e-3, 4)
    assert fair["adamw"].best_on_edge and fair["sgd"].best_on_edge and fair["adamw"].seeds == 3
    assert "**yes: undertuned?**" in (report.out / "report.md").read_text()


def test_to_target_on_the_mean_curve(report):
    rows = {r.method: r for r in report.to_target}
    # target: adamw's mean final loss 3.1, which its mean curve (7.1, 5.1, 3.1) reaches at step 100;
    # scale's mean curve (7.0, 5.0, 3.0) crosses 3.1 at 50 + 50 * (5.0 - 3.1) / 2 = 97.5
    assert rows["adamw"].target == pytest.approx(3.1)
    assert rows["adamw"].steps == pytest.approx(100.0) and rows["scale"].steps == pytest.approx(97.5)
    assert rows["scale"].tokens == pytest.approx(97.5 * TOKENS_PER_STEP)
    assert rows["scale"].flops == pytest.approx(6 * 1e6 * 97.5 * TOKENS_PER_STEP)
    assert rows["scale"].seconds == pytest.approx(10 + 10 * 1.9 / 2)  # evaluations 10 s apart
    assert rows["scale"].speedup == pytest.approx(100 / 97.5)
    assert rows["scale"].reached == 3 and rows["adamw"].reached == 2  # seed 2 ends at 3.2
    assert rows["sgd"].tokens is None  # ends at 4.0


def test_replicates_give_the_interval_not_the_winning_trial(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    eid = client.create_experiment("sweep", artifact_location=str(tmp_path / "a"))
    parent = client.create_run(eid, run_name="sweep x", tags={"optuna.role": "sweep"}).info.run_id
    child = {"mlflow.parentRunId": parent}
    _log_run(client, eid, "adamw", seed=42, final=2.0, lr=1e-3, tags=child)  # the lucky winner
    _log_run(client, eid, "adamw", seed=42, final=2.6, lr=3e-3, tags=child)
    for seed, final in zip((43, 44, 45), (2.4, 2.5, 2.6)):
        _log_run(client, eid, "adamw", seed=seed, final=final, lr=1e-3,
                 tags={**child, "optsweep.replicate": "true", "optsweep.replicate_of": "0"})
    report = compare.build_report(tracking_uri=uri, out=tmp_path / "out", plots=False)
    (row,) = _csv(tmp_path / "out" / "cells.csv")
    assert row["n_seeds"] == "3" and row["seeds"] == "43 44 45"
    assert float(row["val_loss_mean"]) == pytest.approx(2.5)
    assert "3 replicate seed(s); the winning trial excluded" in row["interval_from"]
    assert report.budget[0].losses == [2.0, 2.6]  # replicates are not trials of the search
    # the report went to the sweep's parent run too, with the method's numbers as metrics
    metrics = client.get_run(parent).data.metrics
    assert metrics["report/adamw/llama_tiny/val_loss_mean"] == pytest.approx(2.5)
    assert metrics["report/adamw/llama_tiny/n_seeds"] == 3
    assert {a.path for a in client.list_artifacts(parent, f"report/{(tmp_path / 'out').name}")} >= {
        f"report/out/{n}" for n in ("report.md", "cells.csv", "runs.csv")}


def test_report_run_in_mlflow(report, store):
    client = store["client"]
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id], "tags.`optsweep.summary` = 'true'")
    assert [r.info.run_id for r in runs] == [report.summary_run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["baseline"] == "adamw"
    assert run.data.metrics["report/scale/llama_tiny/val_loss_mean"] == pytest.approx(3.0)
    assert run.data.metrics["report/scale/llama_tiny/speedup_to_target"] == pytest.approx(100 / 97.5)
    assert run.data.metrics["report/sgd/llama_tiny/divergence_rate"] == 0.5
    artifacts = {a.path for a in client.list_artifacts(report.summary_run_id)}
    assert {"report.md", "cells.csv", "runs.csv", "pairwise.csv", "to_target.csv", "fairness.csv",
            "tuning_budget.csv", "sensitivity.csv", "pareto.png", "val_loss.png", "lr_sensitivity.png"} <= artifacts
    again = compare.build_report(tracking_uri=store["uri"], experiments=["quickstart"], out=store["tmp"] / "again",
                                 log=False, plots=False)  # a later report does not count the report run as a training run
    assert sorted(s.method for s in again.summaries) == ["adamw", "scale", "sgd"]


def test_select_latest_and_all(store, tmp_path):
    latest = compare.build_report(tracking_uri=store["uri"], experiments=["quickstart"], select="latest",
                                  out=tmp_path / "l", log=False, plots=False)
    assert {s.method: s.cell.lr for s in latest.summaries}["scale"] == 1e-2  # logged last
    every = compare.build_report(tracking_uri=store["uri"], experiments=["quickstart"], select="all",
                                 out=tmp_path / "a", log=False, plots=False)
    assert sorted((s.method, s.cell.lr) for s in every.summaries) == [
        ("adamw", 1e-3), ("adamw", 3e-3), ("scale", 1e-3), ("scale", 1e-2), ("sgd", 0.1), ("sgd", 1.0)]


@pytest.mark.parametrize("name", ["pareto.png", "val_loss.png", "lr_sensitivity.png"])
def test_plots_exist_and_are_pictures(report, name):
    image = matplotlib.image.imread(report.out / name)
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_pareto_front_hand_checked():
    points = [(1, 5), (2, 4), (2, 3), (3, 3), (4, 1), (0.5, 10), (5, 0.5), (4, 1)]
    assert pareto_front(points) == [5, 0, 2, 4, 6]
    assert pareto_front([]) == []


def test_every_method_gets_its_own_distinct_colour():
    variants = ["sgd+sign", "sgd+row", "sgd+newton_schulz", "sgd+column", "sgdm+row", "sgd", "scale"]
    colours = colours_for([*OPTIMIZER_COLOURS, *variants])
    values = list(colours.values())
    assert len(set(values)) == len(values)
    assert min(colour_distance(a, b) for i, a in enumerate(values) for b in values[i + 1:]) >= 0.25
    assert colours["scale"] == OPTIMIZER_COLOURS["scale"]
    assert colours_for(["my_variant"])["my_variant"] == colours_for(["my_variant", "adam"])["my_variant"]


def test_filters_and_errors(store, tmp_path):
    report = compare.build_report(tracking_uri=store["uri"], tags={"data": "sample"}, models=["llama_60m"],
                                  out=tmp_path, log=False, plots=False)
    assert [(s.method, s.model) for s in report.summaries] == [("adamw", "llama_60m")]
    with pytest.raises(compare.NoRunsError, match="no experiment named 'nope'"):
        compare.build_report(tracking_uri=store["uri"], experiments=["nope"], out=tmp_path, log=False)
    with pytest.raises(compare.NoRunsError, match="no matching run has method muon"):
        compare.build_report(tracking_uri=store["uri"], optimizers=["muon"], out=tmp_path, log=False)
    with pytest.raises(ValueError, match="--baseline lion is not among the compared methods"):
        compare.build_report(tracking_uri=store["uri"], experiments=["quickstart"], baseline="lion",
                             out=tmp_path, log=False)


def test_cli(store, tmp_path, capsys):
    code = main(["compare", "--tracking-uri", store["uri"], "--experiment", "quickstart", "--out",
                 str(tmp_path / "r"), "--no-log", "--baseline", "adamw", "--target-loss", "5.0", "--no-plots"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| method | model | lr | seeds | val loss (mean) | 95% CI |" in out
    assert "| scale | llama_tiny | adamw | -0.1000 |" in out
    rows = {r["method"]: r for r in _csv(tmp_path / "r" / "to_target.csv")}
    assert float(rows["scale"]["steps"]) == pytest.approx(50.0)  # mean curve 7.0, 5.0: crosses 5.0 at step 50
    assert main(["compare", "--tracking-uri", store["uri"], "--baseline", "lion", "--no-log",
                 "--out", str(tmp_path / "x")]) == 2
    assert "error: --baseline lion is not among the compared methods" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", store["uri"], "--list"]) == 0
    assert "- quickstart: 12 run(s) (1 FAILED, 10 FINISHED, 1 RUNNING)" in capsys.readouterr().out  # the parent too


def test_the_method_tag_names_scale_ablation_variants():
    from omegaconf import OmegaConf

    from optsweep.tracking import method_name

    def name(optimizer, **options):
        return method_name(optimizer, OmegaConf.create(options))

    assert name("adamw", lr=1e-3) == "adamw"
    assert name("scale", normalization="column", momentum_on="last") == "scale"
    assert name("scale", normalization="column", momentum_on="none") == "sgd+column"
    assert name("scale", normalization="sign", momentum_on="none") == "sgd+sign"
    assert name("scale", normalization="none", momentum_on="none") == "sgd"


def test_figures_keep_legends_outside_nothing_clipped_and_scales_fixed(monkeypatch, tmp_path):
    from optsweep.report import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    # a narrow perplexity range: still a log axis (the scale never depends on the values)
    plots.pareto_plot([plots.ParetoPoint("adamw", "m", 1e6, 30.0), plots.ParetoPoint("scale", "m", 2e6, 31.0)],
                      tmp_path / "p.png", "ppl", "t")
    curves = [plots.Curve("adamw", "m", [0.0, 50.0, 100.0], [10.4, 5.0, 4.0]),
              plots.Curve("scale", "m", [0.0, 50.0, 100.0], [10.4, 4.8, 3.9], [10.3, 4.7, 3.8], [10.5, 4.9, 4.0], 3)]
    plots.loss_curves_plot(curves, tmp_path / "l.png", "tokens", "t")
    pareto, loss = figures
    assert pareto.axes[0].get_yscale() == "log"
    whole, late = loss.axes
    low, high = whole.get_ylim()
    assert low <= 3.8 and high >= 10.5  # the first evaluation and the seeds' band are on the axes
    for figure, ax in ((pareto, pareto.axes[0]), (loss, late)):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.x0 >= ax.get_window_extent(renderer).x1  # right of the axes: it hides no curve


def test_default_store_and_output_follow_project_root(monkeypatch, tmp_path, capsys):
    """run.py writes to $PROJECT_ROOT/outputs when it is set; the report reads and writes there too."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    assert main(["compare"]) == 2
    assert f"no MLflow store at {tmp_path / 'outputs' / 'mlflow.db'}" in capsys.readouterr().err


def test_a_second_tuned_lr_on_the_edge_is_flagged(tmp_path):
    """Muon-like search over lr and adam_lr: the best lr (1e-2) is inside its range, the best adam_lr
    (3e-3) is the largest of the two tried; a value the search held fixed (momentum) is never flagged."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("two-lrs", artifact_location=str(tmp_path / "a"))
    for lr, adam_lr, final in ((1e-2, 1e-3, 3.0), (1e-2, 3e-3, 2.8), (3e-2, 3e-3, 2.9), (3e-3, 3e-3, 3.1)):
        _log_run(client, exp, "muon", seed=0, final=final, lr=lr,
                 params={"optimizer.adam_lr": adam_lr, "optimizer.momentum": 0.95})
    report = compare.build_report(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiments=["two-lrs"],
                                  out=tmp_path / "r", log=False, plots=False)
    (fair,) = report.fairness
    assert fair.best_lr == 1e-2 and not fair.best_on_edge
    assert fair.other_edges == ("optimizer.adam_lr=0.003 (largest of 2)",)
    assert "**optimizer.adam_lr=0.003 (largest of 2)**: widen" in (tmp_path / "r" / "report.md").read_text()
    assert _csv(tmp_path / "r" / "fairness.csv")[0]["other_values_on_edge"] == "optimizer.adam_lr=0.003 (largest of 2)"
