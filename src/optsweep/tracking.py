"""MLflow set-up: an embedded sqlite store by default, tags and params a comparison needs, reproducibility.

MLflow 3 refuses its old file store unless told otherwise, and Lightning's MLFlowLogger still defaults to
it, so the store is ``sqlite:///<repo>/outputs/mlflow.db`` (``conf/logger/mlflow.yaml``). Each run carries:
- tags: optimizer, method (the optimizer, or the name of a SCALE ablation variant), model, data, strategy,
  seed, git commit (and whether the tree was dirty), task;
- params: the flattened resolved config (Lightning truncates values at 250 characters, so the full
  resolved config is also an artifact, ``config/resolved.yaml``);
- artifact ``environment/versions.json``: Python, platform and the versions of the stack's packages.

A resumed run continues its MLflow run, whose params MLflow never lets change. A resume records itself
instead: tags ``resume_count`` (n) and ``resumed_from`` (the checkpoint), every param whose value differs
from the run's as ``resume/<n>/<key>`` (``train.ckpt_path``, ``paths.run_dir``, ``trainer.max_steps`` if
changed, ...), and the resumed config as ``config/resume/<n>/resolved.yaml``.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from optsweep.paths import repo_root

log = logging.getLogger(__name__)

PACKAGES = ("torch", "lightning", "transformers", "datasets", "tokenizers", "hydra-core", "omegaconf",
            "optuna", "mlflow", "torchdata", "optsweep")


def git_state(root: str | Path) -> dict[str, str]:
    """Commit and dirty flag of the checkout at ``root`` ("unknown" outside a git checkout)."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        import torch

        versions["cuda"] = torch.version.cuda or "none"
    except ImportError:
        pass
    return versions


def run_tags(cfg: DictConfig) -> dict[str, str]:
    choices = _choices(cfg)
    optimizer = str(cfg.optimizer.get("name", choices.get("optimizer", "?")))
    tags = {
        "optimizer": optimizer,
        "method": method_name(optimizer, cfg.optimizer),
        "model": str(cfg.model.get("name", choices.get("model", "?"))),
        "data": str(choices.get("data", cfg.data.get("name", "?"))),
        "strategy": str(choices.get("strategy", "?")),
        "seed": str(cfg.seed),
        "task": str(cfg.task_name),
    }
    tags.update(git_state(repo_root()))
    return tags


def method_name(optimizer: str, options: DictConfig) -> str:
    """What reports call the run's optimizer: its registry name, except for SCALE's ablation switches, whose
    variants (the paper's "SGD + sign", "SGD + column", ...) must not be mistaken for SCALE itself."""
    if optimizer != "scale":
        return optimizer
    from optsweep.optim.scale import method_name as scale_method

    return scale_method(options.get("normalization", "column"), options.get("momentum_on", "last"))


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.optimizer.get('name', '?')}-{cfg.model.get('name', '?')}"


def flat_params(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as flat ``a.b.c`` keys (hydra internals left out)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    flat: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", container)
    return flat


def log_run_context(logger, cfg: DictConfig, datasets: list[dict[str, str]] = (),
                    resumed_from: str | None = None) -> None:
    """Params, full resolved config, package versions and the datasets read, on the logger's MLflow run;
    the experiment is marked as model training (the MLflow 3 UI then opens it on its runs). When the run
    continues from checkpoint ``resumed_from``, the resume is recorded beside the first values instead."""
    client, run_id = logger.experiment, logger.run_id
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if resumed_from is None:
        logger.log_hyperparams(flat_params(cfg))
        client.log_text(run_id, resolved, "config/resolved.yaml")
    else:
        log_resume(client, run_id, flat_params(cfg), resumed_from, resolved)
    client.set_experiment_tag(logger.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    client.log_text(run_id, json.dumps(package_versions(), indent=2), "environment/versions.json")
    if datasets:
        log_dataset_inputs(client, run_id, datasets)


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
RESUME_COUNT_TAG, RESUMED_FROM_TAG = "resume_count", "resumed_from"
PARAM_CHARS = 250  # Lightning's MLFlowLogger truncates param values to this; the first values were logged so


def log_resume(client, run_id: str, params: dict[str, object], checkpoint: str, resolved_yaml: str) -> None:
    """Record resume number n of ``run_id`` without touching its params (see the module's docstring). A
    failure here is a warning: the record of a resume is not worth the run."""
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
        n = int(run.data.tags.get(RESUME_COUNT_TAG, 0)) + 1
        # the count first: a resume that dies halfway leaves its number taken, never reused
        client.log_batch(run_id, tags=[RunTag(RESUME_COUNT_TAG, str(n)), RunTag(RESUMED_FROM_TAG, checkpoint)])
        logged, records = run.data.params, []
        for key, value in params.items():
            text = str(value)[:PARAM_CHARS]
            if key not in logged:
                records.append(Param(key, text))  # a key the run did not have yet: its first value
            elif logged[key] != text:
                records.append(Param(f"resume/{n}/{key}", text))
        for start in range(0, len(records), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=records[start:start + 100])
        client.log_text(run_id, resolved_yaml, f"config/resume/{n}/resolved.yaml")
    except MlflowException as error:
        log.warning("MLflow: could not record the resume from %s on run %s (%s); training goes on",
                    checkpoint, run_id, error)


def log_dataset_inputs(client, run_id: str, datasets: list[dict[str, str]]) -> None:
    """Each dataset (``LMDataModule.dataset_description``) as an MLflow input: the UI's Dataset column."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for d in datasets:
        if d["kind"] == "hub":
            from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

            path, _, subset = d["source"].rpartition("/")
            source = HuggingFaceDatasetSource(path=path, config_name=subset, split=d["split"])
        else:
            import warnings

            from mlflow.data.dataset_source_registry import resolve_dataset_source

            with warnings.catch_warnings():  # "can be interpreted in multiple ways": the same class twice
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(Path(d["source"]).as_uri())
        dataset = MetaDataset(source=source, name=d["name"], digest=d["digest"])
        context = "training" if d["split"] == "train" else "evaluation"
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    client.log_inputs(run_id, datasets=inputs)


def ui_base(tracking_uri: str) -> str:
    """Where the MLflow UI of a store is: the tracking server itself, or a local `mlflow ui` (port 5000)."""
    uri = str(tracking_uri)
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


# MLflow 3 shows an experiment as GenAI (traces, token usage) unless the URL asks for the model-training view;
# the experiment's mlflow.experimentKind tag alone does not switch a fresh browser (3.17, headless Chromium).
ML_VIEW = "?workflowType=machine_learning"


def experiment_link(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the UI."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}{ML_VIEW}"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the UI, and how to start the UI when the store is local."""
    link = f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}{ML_VIEW}"
    if str(tracking_uri).startswith(("http://", "https://")):
        return f"MLflow run: {link}"
    return f"MLflow run: {link} (start the UI first: mlflow ui --backend-store-uri {tracking_uri})"


def _choices(cfg: DictConfig) -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except (ImportError, ValueError):
        return {}
