"""The comparison report, on runs written straight into a temporary MLflow store with training's names."""

from __future__ import annotations

import csv
import math

import matplotlib.image
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from optsweep.report import compare
from optsweep.report.__main__ import main
from optsweep.report.plots import OPTIMIZER_COLOURS, colours_for, pareto_front

TOKENS_PER_STEP = 32 * 128  # quickstart: 32 sequences x 128 tokens


def _log_run(
    client,
    experiment_id,
    optimizer,
    *,
    start,
    ppl,
    memory,
    state,
    status="FINISHED",
    model="llama_tiny",
    throughput=(100.0, 1000.0, 1100.0, 1200.0),
    steps=(0, 50, 100),
    data="sample",
    method=None,
    lr=1e-3,
):
    run = client.create_run(
        experiment_id,
        start_time=start,
        run_name=f"{optimizer}-{model}",
        tags={
            "optimizer": optimizer,
            "model": model,
            "data": data,
            "strategy": "auto",
            "seed": "42",
            "git_commit": "abc",
            **({"method": method} if method else {}),
        },
    )
    final = math.log(ppl)
    losses = [final + 2.0 * (len(steps) - 1 - i) for i in range(len(steps))]  # decreasing to log(ppl)
    metrics = [Metric("val/loss", loss, start + step, step) for step, loss in zip(steps, losses)]
    metrics += [Metric("val/ppl", math.exp(loss), start + step, step) for step, loss in zip(steps, losses)]
    metrics += [
        Metric("val/ppl_paper", 0.97 * math.exp(loss), start + step, step)
        for step, loss in zip(steps, losses)
    ]
    metrics += [
        Metric("tokens/seen", float(s * TOKENS_PER_STEP), start + s, s) for s in range(10, steps[-1] + 1, 10)
    ]
    metrics += [
        Metric("tokens/seen_nonpad", float(s * TOKENS_PER_STEP * 0.9), start + s, s)
        for s in range(10, steps[-1] + 1, 10)
    ]
    metrics += [
        Metric("throughput/tokens_per_s", v, start + i, 10 * (i + 1)) for i, v in enumerate(throughput)
    ]
    metrics += [
        Metric("optimizer/state_bytes", state, start, 1),
        Metric("memory/model_optimizer_bytes", memory, start, 1),
        Metric("memory/peak_bytes", 5e7, start, 1),
        Metric("model/params", 1e6, start, 0),
    ]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.log_param(run.info.run_id, "optimizer.lr", lr)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """quickstart: adamw twice (the older one better), scale, sgd, galore (dominated), muon FAILED, a sweep
    parent without tags; another experiment with one llama_60m run."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    quick = client.create_experiment("quickstart", artifact_location=str(tmp / "artifacts"))
    other = client.create_experiment("other", artifact_location=str(tmp / "artifacts-other"))
    t0 = 1_700_000_000_000
    ids = {
        "adamw_old": _log_run(client, quick, "adamw", start=t0, ppl=31.0, memory=12e6, state=8e6),
        "adamw": _log_run(client, quick, "adamw", start=t0 + 10_000, ppl=33.12, memory=12e6, state=8e6),
        "scale": _log_run(client, quick, "scale", start=t0 + 20_000, ppl=35.0, memory=9e6, state=1e6),
        "sgd": _log_run(client, quick, "sgd", start=t0 + 30_000, ppl=60.0, memory=8e6, state=0.0),
        "galore": _log_run(client, quick, "galore", start=t0 + 40_000, ppl=40.0, memory=11e6, state=7e6),
        "muon": _log_run(
            client, quick, "muon", start=t0 + 50_000, ppl=20.0, memory=10e6, state=2e6, status="FAILED"
        ),
        "other": _log_run(
            client, other, "adamw", start=t0, ppl=25.0, memory=3.5e8, state=2.3e8, model="llama_60m"
        ),
    }
    parent = client.create_run(
        quick, start_time=t0 + 60_000, run_name="sweep-parent"
    )  # no optimizer/model tags
    client.set_terminated(parent.info.run_id, "FINISHED")
    return {"uri": uri, "client": client, "ids": ids, "tmp": tmp}


def test_pareto_front_hand_checked():
    points = [(1, 5), (2, 4), (2, 3), (3, 3), (4, 1), (0.5, 10), (5, 0.5), (4, 1)]
    # by memory: (0.5,10) front; (1,5) front; (2,3) front, (2,4) beaten by it; (3,3) not lower than 3;
    # (4,1) front, its duplicate not; (5,0.5) front
    assert pareto_front(points) == [5, 0, 2, 4, 6]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_tokens_at_reads_the_logged_token_counter():
    history = [(10, 40960.0), (20, 81920.0)]
    assert compare.tokens_at([0, 5, 20, 30], history) == [0.0, 20480.0, 81920.0, 122880.0]


def test_colours_are_fixed_per_optimizer():
    first, second = colours_for(["scale", "adamw", "sgd"]), colours_for(["sgd", "my_variant", "scale"])
    assert first["scale"] == second["scale"] == OPTIMIZER_COLOURS["scale"]
    assert first["sgd"] == second["sgd"] == OPTIMIZER_COLOURS["sgd"]
    assert colours_for(["my_variant"])["my_variant"] == second["my_variant"]  # by name, not by position
    many = colours_for([f"variant_{i}" for i in range(10)])
    assert len(set(many.values())) == 10  # names outside the map still get distinct colours


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return compare.build_report(tracking_uri=store["uri"], experiments=["quickstart"], out=out)


def test_table_numbers(report, store):
    rows = {r.optimizer: r for r in report.rows}
    assert set(rows) == {"adamw", "scale", "sgd", "galore"}  # muon FAILED: skipped
    adamw = rows["adamw"]
    assert adamw.run_id == store["ids"]["adamw"] and adamw.runs == 2  # the latest of two
    assert adamw.val_ppl == pytest.approx(33.12)
    assert adamw.val_ppl_paper == pytest.approx(0.97 * 33.12)
    assert adamw.val_loss == pytest.approx(math.log(33.12))
    assert adamw.steps == 100
    assert adamw.tokens == 100 * TOKENS_PER_STEP and adamw.tokens_nonpad == pytest.approx(
        0.9 * 100 * TOKENS_PER_STEP
    )
    assert adamw.state_bytes == 8e6 and adamw.model_optimizer_bytes == 12e6 and adamw.peak_bytes == 5e7
    assert adamw.tokens_per_s == 1050.0  # median of 100, 1000, 1100, 1200
    assert rows["sgd"].state_bytes == 0.0
    assert any("skipped 1 run(s) not FINISHED: 1 FAILED" in n for n in report.notes)
    assert any(
        "skipped 1 run(s) without optimizer/model tags (sweep parents?): sweep-parent" in n
        for n in report.notes
    )

    with (report.out / "runs.csv").open() as handle:
        table = {r["optimizer"]: r for r in csv.DictReader(handle)}
    assert float(table["scale"]["val_ppl"]) == pytest.approx(35.0)
    assert float(table["scale"]["model_optimizer_gb"]) == pytest.approx(0.009)
    assert float(table["galore"]["optimizer_state_gb"]) == pytest.approx(0.007)
    assert table["adamw"]["run_id"] == store["ids"]["adamw"]

    text = (report.out / "report.md").read_text()
    assert (
        "| adamw | llama_tiny | 0.001 | 33.12 | 32.13 | 3.5001 | 100 | 409.60k | 368.64k | 8.000 | 12.000 | 50.000 "
        "| 1,050 | 2 |" in text
    )
    assert "model + optimizer (MB)" in text and "| 12.000 |" in text  # tiny runs are shown in MB
    assert "the latest started" in text
    assert "![pareto](pareto.png)" in text and "![val_loss](val_loss.png)" in text


def test_best_selection_picks_the_lower_perplexity(store, tmp_path):
    report = compare.build_report(
        tracking_uri=store["uri"], experiments=["quickstart"], select="best", out=tmp_path, log=False
    )
    adamw = next(r for r in report.rows if r.optimizer == "adamw")
    assert adamw.run_id == store["ids"]["adamw_old"] and adamw.val_ppl == pytest.approx(31.0)
    assert report.summary_run_id is None


@pytest.mark.parametrize("name", ["pareto.png", "val_loss.png"])
def test_plots_exist_and_are_pictures(report, name):
    path = report.out / name
    assert path.stat().st_size > 20_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_summary_run_holds_the_report(report, store):
    client = store["client"]
    experiment = client.get_experiment_by_name("quickstart")
    summaries = client.search_runs([experiment.experiment_id], "tags.`optsweep.summary` = 'true'")
    assert [r.info.run_id for r in summaries] == [report.summary_run_id]
    assert summaries[0].info.status == "FINISHED"
    assert summaries[0].data.params["select"] == "latest"
    artifacts = {a.path for a in client.list_artifacts(report.summary_run_id)}
    assert artifacts == {"report.md", "runs.csv", "pareto.png", "val_loss.png"}
    # a later report does not count the summary run as a training run
    again = compare.build_report(
        tracking_uri=store["uri"], experiments=["quickstart"], out=store["tmp"] / "again", log=False
    )
    assert sorted(r.optimizer for r in again.rows) == ["adamw", "galore", "scale", "sgd"]


def test_filters_by_tag_model_and_experiment(store, tmp_path):
    report = compare.build_report(
        tracking_uri=store["uri"], tags={"data": "sample"}, models=["llama_60m"], out=tmp_path, log=False
    )
    assert [(r.optimizer, r.model, r.experiment) for r in report.rows] == [("adamw", "llama_60m", "other")]
    assert report.rows[0].val_ppl == pytest.approx(25.0)
    assert "model + optimizer (GB)" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"experiments": ["nope"]}, "no experiment named 'nope'"),
        (
            {"experiments": ["quickstart"], "tags": {"data": "c4"}},
            "no run in 'quickstart' has tag data=c4 (values seen: sample)",
        ),
        ({"experiments": ["quickstart"], "optimizers": ["muon"]}, "no matching run has optimizer muon"),
        ({"experiments": ["quickstart"], "models": ["llama_1b"]}, "no matching run has model llama_1b"),
    ],
)
def test_nothing_found_says_which_filter(store, tmp_path, kwargs, message):
    with pytest.raises(compare.NoRunsError) as error:
        compare.build_report(tracking_uri=store["uri"], out=tmp_path, log=False, **kwargs)
    assert message in str(error.value)
    assert "--list" in str(error.value)


def test_cli(store, tmp_path, capsys):
    code = main(
        [
            "compare",
            "--tracking-uri",
            store["uri"],
            "--experiment",
            "quickstart",
            "--model",
            "llama_tiny",
            "--out",
            str(tmp_path / "r"),
            "--no-log",
            "--ppl",
            "paper",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| optimizer | model | lr | val ppl (paper est.) | val ppl |" in out
    assert (tmp_path / "r" / "pareto.png").is_file()
    assert main(["compare", "--tracking-uri", store["uri"], "--experiment", "nope", "--no-log"]) == 2
    assert "error: no experiment named 'nope'" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", store["uri"], "--list"]) == 0
    assert "- quickstart: 7 run(s) (1 FAILED, 6 FINISHED)" in capsys.readouterr().out  # summaries not counted


def test_scale_ablation_variants_are_rows_of_their_own(tmp_path):
    """Runs of the SCALE optimizer with its ablation switches carry a method tag (sgd+sign, ...): each is its
    own row and curve, not the latest 'scale' run standing for all of them."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    eid = client.create_experiment("ablation")
    for i, (method, ppl) in enumerate([("sgd+sign", 300.0), ("sgd+column", 200.0), ("scale", 150.0)]):
        _log_run(client, eid, "scale", start=1000 + i, ppl=ppl, memory=1e6, state=1e5, method=method, lr=i + 1.0)
    report = compare.build_report(experiments=["ablation"], tracking_uri=uri, out=tmp_path / "out", log=False)
    assert {(r.optimizer, round(r.val_ppl), r.lr) for r in report.rows} == {
        ("sgd+sign", 300, 1.0), ("sgd+column", 200, 2.0), ("scale", 150, 3.0)}


def test_the_method_tag_names_scale_ablation_variants():
    from omegaconf import OmegaConf

    from optsweep.tracking import method_name

    def name(optimizer, **options):
        return method_name(optimizer, OmegaConf.create(options))

    assert name("adamw", lr=1e-3) == "adamw"
    assert name("scale", normalization="column", momentum_on="last") == "scale"
    assert name("scale", normalization="column", momentum_on="none") == "sgd+column"
    assert name("scale", normalization="sign", momentum_on="none") == "sgd+sign"
    assert name("scale", normalization="newton_schulz", momentum_on="none") == "sgd+newton_schulz"
    assert name("scale", normalization="none", momentum_on="none") == "sgd"
    assert name("scale", normalization="row", momentum_on="all") == "sgdm+row"
