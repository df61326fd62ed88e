"""The GPU check of issue 18: every CUDA-path measurement in one command, each step with its own time limit.

    python benchmarks/gpu/check.py OUTDIR              # on the GPU (bash benchmarks/gpu/run.sh OUTDIR)
    python benchmarks/gpu/check.py --dry-run OUTDIR    # the same steps on CPU, tiny sizes, fp32

Steps, in order of priority (a global deadline, 420 s by default, cuts the tail, so the whole check stays
within 8 minutes on the H200; a step that fails or runs out of time is recorded and the next one runs):

1. install: the wheels of .whl/ (fetch_wheels.py) into a folder put on PYTHONPATH before the project's src;
   the machine's torch is left alone. In a dry run: that the set installs for CPython 3.12 on Linux x86-64;
2. optimizer_step: SCALE vs fused AdamW step time at llama_350m and llama_1b shapes (optimizer_step.py);
3. peak_memory: one training step at llama_350m for SCALE and AdamW (peak_memory.py): measured against
   weights + grads + state, and weights + state against the paper's 0.80 / 2.21 GB;
4. overhead_<model>: plain loop vs ours vs ours+mlflow at llama_60m and llama_130m, seq 256, bf16-true
   (training_overhead.py): tokens/s, MFU, overhead;
5. train_scale, train_adamw: ``run.py optimizer=<opt> model=llama_60m data=sample trainer=gpu
   trainer.max_steps=100``, read back from its MLflow store: the loss falls, nothing is NaN, MFU is logged;
6. tests: ``pytest tests/test_gpu.py``;
7. overhead_<model>_compile: step 4 with ``--compile`` (train.compile);
8. peak_memory_others: step 3 for the other optimizers.

OUTDIR receives four files (the device tool returns at most eight): summary.md (date, GPU, torch, each
goal of the issue met / not met with its figure), tables.md, results.json and logs.tar.gz (every step's
log, JSON and the pytest junit file). Everything else (MLflow stores, the sample corpus) stays in --workdir.
This driver needs only the standard library; the steps run as child processes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
PYTHON = sys.executable
# The paper's model + optimizer memory at 350M (GB): SCALE 0.80, Adam 2.21 (arXiv 2506.16659 v2, main table).
PAPER_SCALE_OVER_ADAM_350M = 0.80 / 2.21
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
ENVIRONMENT_PROBE = """
import json, platform, torch
from importlib import metadata, util
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "lightning": version("lightning"), "cuda_available": cuda,
    "device": torch.cuda.get_device_name() if cuda else platform.machine() + " CPU",
    "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
    "packages": {n: version(n) for n in ("transformers", "tokenizers", "hydra-core", "omegaconf",
                                         "mlflow-skinny", "mlflow", "optuna", "torchdata", "sqlalchemy")},
    "missing": [m for m in ("hydra", "omegaconf", "mlflow", "torchdata", "optuna") if util.find_spec(m) is None],
}))
"""


@dataclass
class Step:
    name: str
    title: str
    limit_s: float
    argv: list[str] | None = None     # None: skipped, for `skip`
    skip: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    json_path: Path | None = None     # the step's own results, when it writes them
    # filled in when it runs
    status: str = "not run"           # ok | failed | timed out | skipped
    returncode: int | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0          # the step's processes' CPU time (a busy machine shows wall >> CPU)
    reason: str | None = None
    data: object = None


# ----------------------------------------------------------------------------------------------- plan
def plan(dry: bool, work: Path) -> list[Step]:
    """The steps, in the order they run. ``dry``: tiny sizes on CPU, what needs CUDA skipped with why."""
    bench = ROOT / "benchmarks"
    logs = work / "logs"
    steps: list[Step] = []

    def step(name, title, limit_s, argv=None, skip=None, json_name=None, env=None):
        path = logs / json_name if json_name else None
        if argv is not None and path is not None:
            argv = [*argv, "--json", str(path)]
        steps.append(Step(name, title, limit_s, argv, skip, env or {}, path))

    # optimizer step time
    if dry:
        step_args = ["--models", "llama_tiny,vocab_size=512", "--device", "cpu", "--dtype", "fp32",
                     "--warmup", "2", "--repeats", "3", "--budget", "5"]
    else:
        step_args = ["--models", "llama_350m", "llama_1b", "--device", "cuda", "--dtype", "bf16",
                     "--warmup", "3", "--repeats", "20", "--budget", "10"]
    step("optimizer_step", "optimizer step time, SCALE vs fused AdamW", 150,
         [PYTHON, str(bench / "optimizer_step.py"), *step_args, "--only", "scale", "adamw"],
         json_name="optimizer_step.json")

    # peak memory of one training step
    if dry:
        memory_args = ["--model", "llama_tiny", "--vocab-size", "512", "--seq-len", "32", "--micro-batch", "2",
                       "--steps", "2", "--device", "cpu"]
    else:
        memory_args = ["--model", "llama_350m", "--seq-len", "256", "--micro-batch", "32", "--steps", "2",
                       "--device", "cuda"]
    step("peak_memory", "peak memory of a training step, SCALE and AdamW", 90,
         [PYTHON, str(bench / "peak_memory.py"), *memory_args, "--optimizers", "scale,adamw"],
         json_name="peak_memory.json")

    # Lightning overhead, eager
    models = ["llama_tiny"] if dry else ["llama_60m", "llama_130m"]
    if dry:
        overhead_args = ["--vocab-size", "512", "--seq-len", "32", "--micro-batch", "2", "--accumulate", "2",
                         "--steps", "2", "--warmup", "1", "--repeats", "1", "--log-every", "1",
                         "--check-steps", "1", "--device", "cpu"]
    else:
        overhead_args = ["--seq-len", "256", "--micro-batch", "64", "--accumulate", "2", "--steps", "30",
                         "--warmup", "10", "--log-every", "10", "--device", "cuda", "--precision", "bf16-true"]
    variants = ["--variants", "plain,ours,ours+mlflow"]
    for model in models:
        limit = 75 if model == "llama_130m" else 60
        step(f"overhead_{model}", f"Lightning overhead at {model}, eager", limit,
             [PYTHON, str(bench / "training_overhead.py"), "--model", model, *overhead_args, *variants,
              *([] if dry else ["--repeats", "2"])],
             json_name=f"overhead_{model}.json")

    # end-to-end runs
    if dry:
        run_args = ["model=llama_tiny", "data=sample", "trainer=cpu", "train.max_steps=8", "trainer.max_steps=8",
                    "train.warmup_steps=1", "train.total_batch_size=8", "train.micro_batch_size=8",
                    "train.eval_every_n_steps=8", "data.val_tokens=2000", "trainer.log_every_n_steps=2"]
    else:
        run_args = ["model=llama_60m", "data=sample", "trainer=gpu", "trainer.max_steps=100"]
    for optimizer in ("scale", "adamw"):
        step(f"train_{optimizer}", f"run.py end to end, {optimizer}", 120,
             [PYTHON, str(ROOT / "run.py"), f"optimizer={optimizer}", *run_args, "task_name=gpu_check",
              f"paths.data_dir={work / 'data'}"],
             env={"PROJECT_ROOT": str(work / f"train_{optimizer}")})  # its own MLflow store

    # the CUDA tests
    step("tests", "pytest tests/test_gpu.py", 150,
         [PYTHON, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py"),
          f"--junitxml={logs / 'junit.xml'}"])

    # Lightning overhead, compiled
    for model in models:
        title = f"Lightning overhead at {model}, torch.compile"
        if dry:
            step(f"overhead_{model}_compile", title, 0,
                 skip="torch.compile of the model takes minutes on a 2-core CPU; the GPU run compiles")
        else:
            step(f"overhead_{model}_compile", title, 120,
                 [PYTHON, str(bench / "training_overhead.py"), "--model", model, *overhead_args, *variants,
                  "--repeats", "1", "--compile"],
                 json_name=f"overhead_{model}_compile.json")

    # the other optimizers' memory, if time is left
    others = sorted(p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml") if p.stem not in ("scale", "adamw"))
    step("peak_memory_others", "peak memory of a training step, the other optimizers", 90,
         [PYTHON, str(bench / "peak_memory.py"), *memory_args, "--optimizers", ",".join(others)],
         json_name="peak_memory_others.json")
    return steps


# ---------------------------------------------------------------------------------------------- running
def run_step(step: Step, deadline: float, env: dict[str, str], log_path: Path) -> None:
    if step.argv is None:
        step.status, step.reason = "skipped", step.skip
        return
    left = deadline - time.monotonic()
    if left < min(15.0, step.limit_s):
        step.status, step.reason = "skipped", f"no time left in the check's budget ({left:.0f} s)"
        return
    limit = min(step.limit_s, left)
    start = time.monotonic()
    timed_out = threading.Event()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(step.argv) + "\n")
        log.flush()
        # A session of its own, so that a timeout ends the step's children too (pytest's runs, compile workers)
        child = subprocess.Popen(step.argv, cwd=ROOT, env={**env, **step.env}, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)

        def stop() -> None:
            timed_out.set()
            kill_group(child.pid)

        timer = threading.Timer(limit, stop)
        timer.start()
        # wait4: the exit status and this child's own CPU time (steps may run side by side in a dry run)
        _, status, usage = os.wait4(child.pid, 0)
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        kill_group(child.pid)  # anything the step left behind
    step.seconds = time.monotonic() - start
    step.cpu_seconds = usage.ru_utime + usage.ru_stime
    step.returncode = child.returncode
    if timed_out.is_set():
        step.status, step.reason = "timed out", f"stopped at its {limit:.0f} s limit"
    elif step.returncode != 0:
        step.status = "failed"
        step.reason = f"exit status {step.returncode}: {last_line(log_path)}"
    else:
        step.status = "ok"


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def install_wheels(dry: bool, work: Path, env: dict[str, str], log_path: Path) -> Step:
    """GPU: the carried wheels into a folder that goes first on PYTHONPATH. Dry run: that they install for
    CPython 3.12 on Linux x86-64 (the GPU machine), without using them here (this Python may differ)."""
    step = Step("install", "wheels of .whl/ into a folder on PYTHONPATH", 90)
    wheels = sorted(str(p) for p in WHEELS.glob("*.whl"))
    if not wheels:
        step.status = "skipped"
        step.reason = ("no wheels in .whl/ (python benchmarks/gpu/fetch_wheels.py fetches them); the packages "
                       "this Python already has are used")
        return step
    target = work / ("site-check" if dry else "site")
    argv = [PYTHON, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--upgrade", "--target", str(target)]
    if dry:
        step.title = "the wheels of .whl/ install for CPython 3.12, Linux x86-64 (not used here)"
        argv += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 *[arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]]
    step.argv = [*argv, *wheels]
    run_step(step, time.monotonic() + step.limit_s, env, log_path)
    if step.status == "ok":
        step.data = {"wheels": len(wheels), "bytes": sum(Path(w).stat().st_size for w in wheels),
                     "target": str(target)}
        if not dry:
            env["PYTHONPATH"] = os.pathsep.join([str(target), env["PYTHONPATH"]])
    return step


# --------------------------------------------------------------------------------------------- reading
def read_results(step: Step, work: Path) -> None:
    """The step's figures into ``step.data`` (from its JSON, its junit file or its MLflow store). A step
    stopped at its limit keeps what its JSON holds (optimizer_step.py writes one model at a time)."""
    partial = step.status == "timed out" and step.json_path is not None and step.json_path.exists()
    if step.status != "ok" and not partial:
        return
    try:
        if step.json_path is not None:
            step.data = json.loads(step.json_path.read_text())
        elif step.name == "tests":
            step.data = read_junit(work / "logs" / "junit.xml")
        elif step.name.startswith("train_"):
            step.data = read_mlflow_run(work / step.name / "outputs" / "mlflow.db", step.name.removeprefix("train_"))
    except Exception as error:  # noqa: BLE001 - an unreadable result fails this step, not the check
        step.status, step.reason = "failed", f"its results could not be read: {type(error).__name__}: {error}"


def read_junit(path: Path) -> dict:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
        cases.append({"name": case.get("name"), "outcome": outcome, "message": message,
                      "seconds": float(case.get("time") or 0)})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "cases": cases}


def read_mlflow_run(db: Path, optimizer: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("gpu_check")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.optimizer = '{optimizer}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    histories = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                         key=lambda m: (m.step, m.timestamp))]
                 for key in run.data.metrics}
    non_finite = sorted(key for key, values in histories.items() if any(not math.isfinite(v) for _, v in values))

    def series(key):
        return [v for _, v in histories.get(key, [])]

    train, val, mfu = series("train/loss"), series("val/loss"), series("throughput/mfu")
    return {
        "status": run.info.status, "model": run.data.tags.get("model"),
        "precision": run.data.params.get("trainer.precision"), "steps": max((s for s, _ in histories.get(
            "train/loss", [])), default=0),
        "train_loss": train, "val_loss": val, "non_finite_metrics": non_finite,
        "train_loss_falls": len(train) >= 2 and train[-1] < train[0],
        "val_loss_falls": len(val) >= 2 and val[-1] < val[0],
        "mfu": mfu, "tokens_per_s": series("throughput/tokens_per_s"),
        "peak_memory_bytes": max(series("memory/peak_bytes"), default=None),
    }


# ------------------------------------------------------------------------------------------- reporting
def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def mfu_text(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def tables(steps: dict[str, Step]) -> str:
    out = []
    tests = steps.get("tests")
    if tests and isinstance(tests.data, dict):
        out += ["## tests/test_gpu.py", "", "counts: " + ", ".join(f"{k} {v}" for k, v in tests.data["counts"].items()),
                "", md_table(["test", "outcome", "s", "message"],
                             [[c["name"], c["outcome"], f"{c['seconds']:.1f}", c["message"]]
                              for c in tests.data["cases"]]), ""]
    overheads = [s for name, s in steps.items() if name.startswith("overhead_") and isinstance(s.data, dict)]
    if overheads:
        out += ["## Training overhead (training_overhead.py): plain loop vs ours", ""]
        rows = []
        for s in overheads:
            d = s.data
            for variant, v in d["variants"].items():
                rows.append([d["model"], "yes" if d["compile"] else "no", variant, f"{v['tokens_per_s']:,.0f}",
                             f"{v['ms_per_step']:.1f}", pct(v["overhead"]), mfu_text(v["mfu"]),
                             "-" if v["max_abs_dloss_all"] is None else f"{v['max_abs_dloss_all']:.1e}"])
        out += [md_table(["model", "compile", "variant", "tokens/s", "ms/step", "overhead", "MFU",
                          "max abs dloss"], rows), ""]
        d = overheads[0].data
        out += [(f"{d['machine']}; {d['precision']}; batch {d['micro_batch']} x {d['seq_len']} x "
                 f"{d['accumulate']} accumulation; {d['steps']} timed steps after {d['warmup']}; optimizer "
                 f"{d['optimizer']}; medians over repeats"), ""]
    memory = [s for name, s in steps.items() if name.startswith("peak_memory") and isinstance(s.data, dict)]
    if memory:
        out += ["## Peak memory of a training step (peak_memory.py), MB = 1e6 bytes", ""]
        rows = []
        for s in memory:
            for r in s.data["rows"]:
                if r["skipped"]:
                    rows.append([r["optimizer"], *["-"] * 8, f"skipped: {r['skipped']}"])
                    continue
                rows.append([r["optimizer"], *(f"{r[k] / 1e6:,.1f}" for k in
                                               ("params", "grads", "state", "analytic", "resident",
                                                "model_optimizer", "peak")),
                             f"{r['peak'] / r['analytic']:.2f}", ""])
        out += [md_table(["optimizer", "weights", "grads", "state", "w+g+s", "resident after step",
                          "model+opt (after zero_grad)", "peak", "peak / (w+g+s)", "note"], rows), ""]
        d = memory[0].data
        out += [f"{d['machine']}; model {d['model']}, {d['dtype']}, batch {d['micro_batch']} x {d['seq_len']}", ""]
    opt = steps.get("optimizer_step")
    if opt and isinstance(opt.data, dict):
        out += ["## Optimizer step time (optimizer_step.py)", ""]
        rows = []
        for model, result in opt.data["models"].items():
            fused = next((r["step_ms"] for r in result["rows"] if r["optimizer"] == "adamw (fused)"), None)
            for r in result["rows"]:
                rows.append([model, r["optimizer"], f"{r['step_ms']:.2f}",
                             f"{r['step_ms'] / fused:.2f}" if fused else "-", f"{r['state_bytes']:,}"])
        out += [md_table(["model", "optimizer", "step ms", "x AdamW fused", "state bytes"], rows), "",
                f"{opt.data['machine']}, torch {opt.data['torch']}, {opt.data['dtype']}", ""]
        for model, result in opt.data["models"].items():
            out += [f"note ({model}): {n}" for n in result["notes"]]
        out.append("")
    trains = [s for name, s in steps.items() if name.startswith("train_") and isinstance(s.data, dict)]
    if trains:
        out += ["## run.py end to end (read back from its MLflow store)", ""]
        rows = []
        for s in trains:
            d = s.data
            rows.append([s.name.removeprefix("train_"), d["model"], d["precision"], d["steps"],
                         f"{d['train_loss'][0]:.3f} -> {d['train_loss'][-1]:.3f}" if d["train_loss"] else "-",
                         f"{d['val_loss'][0]:.3f} -> {d['val_loss'][-1]:.3f}" if d["val_loss"] else "-",
                         ", ".join(d["non_finite_metrics"]) or "none",
                         mfu_text(d["mfu"][-1]) if d["mfu"] else "not logged",
                         f"{d['tokens_per_s'][-1]:,.0f}" if d["tokens_per_s"] else "-",
                         f"{d['peak_memory_bytes'] / 1e9:.2f}" if d["peak_memory_bytes"] else "-", d["status"]])
        out += [md_table(["optimizer", "model", "precision", "steps", "train/loss first -> last",
                          "val/loss first -> last", "non-finite metrics", "MFU (last window)", "tokens/s",
                          "peak GB", "MLflow status"], rows), ""]
    return "\n".join(out).rstrip() + "\n"


def goals(steps: dict[str, Step], dry: bool) -> list[dict]:
    """Issue 18's goals, each with its measured figure and whether it is met (None: not measured)."""
    out = []

    def goal(name, target, figure, met, missing=None):
        out.append({"goal": name, "target": target, "figure": figure if figure is not None else missing,
                    "met": met if figure is not None else None})

    step = steps.get("tests")
    tests = step.data if step and isinstance(step.data, dict) else None
    if tests:
        c = tests["counts"]
        figure = f"{c['passed']} passed, {c['failed'] + c['error']} failed, {c['skipped']} skipped"
        goal("every test_gpu.py test passes", "all pass, none skipped", figure,
             c["failed"] + c["error"] == 0 and c["skipped"] == 0 and c["passed"] > 0)
    else:
        goal("every test_gpu.py test passes", "all pass, none skipped", None, None, reason(steps.get("tests")))
    for model in ("llama_60m", "llama_130m") if not dry else ("llama_tiny",):
        s = steps.get(f"overhead_{model}")
        ours = s.data["variants"].get("ours") if s and isinstance(s.data, dict) else None
        mlflow = s.data["variants"].get("ours+mlflow") if ours else None
        figure = (f"ours {pct(ours['overhead'])}, ours+mlflow {pct(mlflow['overhead']) if mlflow else '-'}"
                  if ours else None)
        goal(f"ours within 3% of the plain loop at {model}", "overhead <= +3.0% (eager)", figure,
             ours is not None and ours["overhead"] <= 0.03, reason(s))
    model = "llama_tiny" if dry else "llama_130m"
    s = steps.get(f"overhead_{model}")
    v = s.data["variants"] if s and isinstance(s.data, dict) else None
    if v and v["plain"]["mfu"] is not None:
        goal(f"MFU at {model} beside the plain loop's", "both reported",
             f"ours {mfu_text(v['ours']['mfu'])}, plain {mfu_text(v['plain']['mfu'])}", True)
    else:
        goal(f"MFU at {model} beside the plain loop's", "both reported", None, None,
             "no MFU on CPU (no peak FLOP/s)" if v else reason(s))
    s = steps.get("optimizer_step")
    for model in (("llama_350m", "llama_1b") if not dry else ("llama_tiny,vocab_size=512",)):
        result = s.data["models"].get(model) if s and isinstance(s.data, dict) else None
        ms = {r["optimizer"]: r["step_ms"] for r in result["rows"]} if result else {}
        ratio = ms["scale"] / ms["adamw (fused)"] if "scale" in ms and "adamw (fused)" in ms else None
        goal(f"SCALE step <= 0.7x fused AdamW at {model}", "<= 0.70x",
             None if ratio is None else f"{ratio:.2f}x ({ms['scale']:.2f} ms vs {ms['adamw (fused)']:.2f} ms)",
             ratio is not None and ratio <= 0.7, reason(s))
    s = steps.get("peak_memory")
    rows = {r["optimizer"]: r for r in s.data["rows"] if not r["skipped"]} if s and isinstance(s.data, dict) else {}
    if "scale" in rows and "adamw" in rows:
        ratio = rows["scale"]["model_optimizer"] / rows["adamw"]["model_optimizer"]
        goal(f"SCALE / AdamW model+optimizer memory at {s.data['model']} within 10% of 0.80 / 2.21",
             f"{PAPER_SCALE_OVER_ADAM_350M:.3f} +- 10%",
             f"{ratio:.3f} ({rows['scale']['model_optimizer'] / 1e9:.3f} GB / "
             f"{rows['adamw']['model_optimizer'] / 1e9:.3f} GB)",
             abs(ratio / PAPER_SCALE_OVER_ADAM_350M - 1) <= 0.10)
    else:
        goal("SCALE / AdamW model+optimizer memory within 10% of 0.80 / 2.21",
             f"{PAPER_SCALE_OVER_ADAM_350M:.3f} +- 10%", None, None, reason(s))
    for optimizer in ("scale", "adamw"):
        s = steps.get(f"train_{optimizer}")
        d = s.data if s and isinstance(s.data, dict) else None
        if d:
            mfu_ok = bool(d["mfu"]) and all(0 < m < 1 for m in d["mfu"])
            figure = (f"train/loss {d['train_loss'][0]:.3f} -> {d['train_loss'][-1]:.3f}, val/loss "
                      f"{d['val_loss'][0]:.3f} -> {d['val_loss'][-1]:.3f}, non-finite: "
                      f"{', '.join(d['non_finite_metrics']) or 'none'}, MFU "
                      f"{mfu_text(d['mfu'][-1]) if d['mfu'] else 'not logged'}")
            met = d["train_loss_falls"] and d["val_loss_falls"] and not d["non_finite_metrics"] and (mfu_ok or dry)
        else:
            figure, met = None, None
        goal(f"run.py {optimizer}: loss falls, nothing NaN, MFU logged",
             "loss falls; no NaN; 0 < MFU < 1" + (" (MFU: CUDA only)" if dry else ""), figure, met, reason(s))
    return out


def reason(step: Step | None) -> str:
    if step is None:
        return "not planned"
    return f"{step.status}: {step.reason}" if step.reason else step.status


def summary(env_info: dict, steps: list[Step], goal_rows: list[dict], dry: bool, started: str,
            total_s: float) -> str:
    lines = ["# GPU check (issue 18)", ""]
    if dry:
        lines += ["**DRY RUN on CPU with tiny sizes: these figures are not GPU measurements and judge no goal.**", ""]
    lines += [
        f"- date: {started} (UTC)",
        f"- device: {env_info.get('device', 'unknown')}"
        + (f" ({env_info['gpu_memory_gib']:.0f} GiB)" if env_info.get("gpu_memory_gib") else ""),
        (f"- torch {env_info.get('torch', '?')} (CUDA {env_info.get('cuda') or 'none'}), lightning "
         f"{env_info.get('lightning', '?')}, python {env_info.get('python', '?')}"),
        f"- whole check: {total_s:.0f} s", "",
        "## Goals", "",
        md_table(["goal", "target", "measured", "met"],
                 [[g["goal"], g["target"], g["figure"],
                   "not measured" if g["met"] is None else ("dry run" if dry else ("met" if g["met"] else "NOT met"))]
                  for g in goal_rows]),
        "", "## Steps", "",
        md_table(["step", "what", "status", "s", "CPU s", "note"],
                 [[s.name, s.title, s.status, f"{s.seconds:.0f}", f"{s.cpu_seconds:.0f}", s.reason or ""]
                  for s in steps]),
        "", "Tables: tables.md; every figure: results.json; logs: logs.tar.gz.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path, help="folder for summary.md, tables.md, results.json, logs.tar.gz")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, fp32; CUDA-only parts skipped")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all steps after the install (default: 420 on GPU, 900 dry)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="steps run side by side (default: 1 on GPU, where they are timed; 2 in a dry run)")
    parser.add_argument("--only", default=None, help="comma-separated step names to run (default: all)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="MLflow stores, the sample corpus, logs (default: a fresh temporary folder)")
    args = parser.parse_args(argv)
    begin = time.monotonic()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="optsweep-gpu-check-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    args.outdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH", "")] if p)
    env.pop("HYDRA_FULL_ERROR", None)

    install = install_wheels(args.dry_run, work, env, work / "logs" / "install.log")
    print(f"[{time.monotonic() - begin:5.0f}s] install: {install.status} {install.reason or ''}", flush=True)
    if install.status not in ("ok", "skipped") and not args.dry_run:
        print(f"error: the wheels of .whl/ did not install ({install.reason}); fetch them again with "
              "python benchmarks/gpu/fetch_wheels.py", file=sys.stderr)
        return 2
    sys.path[:0] = env["PYTHONPATH"].split(os.pathsep)  # for reading the MLflow stores back

    probe = subprocess.run([PYTHON, "-c", ENVIRONMENT_PROBE], env=env, capture_output=True, text=True, cwd=ROOT,
                           check=False)
    env_info = json.loads(probe.stdout) if probe.returncode == 0 else {"error": probe.stderr[-500:]}
    if not args.dry_run and not env_info.get("cuda_available"):
        print("error: torch sees no CUDA device here; run with --dry-run on a CPU", file=sys.stderr)
        return 2
    if env_info.get("missing"):
        print(f"error: {PYTHON} cannot import {', '.join(env_info['missing'])}: fetch the wheels with python "
              "benchmarks/gpu/fetch_wheels.py and carry .whl/ (or install the project's requirements)",
              file=sys.stderr)
        return 2
    print(f"environment: {json.dumps(env_info)}", flush=True)

    steps = plan(args.dry_run, work)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            print(f"error: --only names unknown step(s) {', '.join(sorted(unknown))}; steps are "
                  f"{', '.join(s.name for s in steps)}", file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name in wanted]
    deadline = time.monotonic() + (args.budget_s or (900 if args.dry_run else 420))
    if args.dry_run:  # the limits guard against a hang; a busy CPU may run tiny steps slower than the GPU
        for step in steps:
            step.limit_s *= 3

    def run(step: Step) -> None:
        run_step(step, deadline, env, work / "logs" / f"{step.name}.log")
        read_results(step, work)
        print(f"[{time.monotonic() - begin:5.0f}s] {step.name}: {step.status} ({step.seconds:.0f} s, CPU "
              f"{step.cpu_seconds:.0f} s) {step.reason or ''}", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs or (2 if args.dry_run else 1)) as pool:
        list(pool.map(run, steps))

    all_steps = [install, *steps]
    by_name = {s.name: s for s in all_steps}
    goal_rows = goals(by_name, args.dry_run)
    total = time.monotonic() - begin
    (args.outdir / "tables.md").write_text(tables(by_name))
    (args.outdir / "summary.md").write_text(summary(env_info, all_steps, goal_rows, args.dry_run, started, total))
    (args.outdir / "results.json").write_text(json.dumps({
        "dry_run": args.dry_run, "date_utc": started, "seconds": total, "environment": env_info,
        "goals": goal_rows,
        "steps": [{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()} for s in all_steps],
    }, indent=1, default=str))
    with tarfile.open(args.outdir / "logs.tar.gz", "w:gz") as tar:
        tar.add(work / "logs", arcname="logs")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print((args.outdir / "summary.md").read_text())
    return 0 if all(s.status in ("ok", "skipped") for s in all_steps) else 1


if __name__ == "__main__":
    sys.exit(main())
