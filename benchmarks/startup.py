"""How long a bad config value takes to be refused: `python run.py <bad override>` from start to exit status 2.

Each case is a fresh process (what a user waits for), repeated and reported as the median wall time, with
the heavy libraries the process had imported by the time it refused (read from the interpreter's own
``-X importtime`` report): a refusal that needs none of torch, Lightning, transformers and MLflow should
cost Hydra's config composition only.

    python benchmarks/startup.py                 # ~1 min on 2 CPU cores
    python benchmarks/startup.py --repeats 5
    PYTHONPATH= python benchmarks/startup.py --repo /other/checkout     # another checkout's run.py, for a before/after
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "transformers", "mlflow")
CASES = {
    "optimizer.lr=-1": ["experiment=quickstart", "optimizer.lr=-1"],
    "train.max_steps=0": ["experiment=quickstart", "train.max_steps=0"],
    "data.seq_len=1": ["experiment=quickstart", "data.seq_len=1"],
    "optimizer=adamx (Hydra's)": ["experiment=quickstart", "optimizer=adamx"],
    "unreachable tracking URI": ["experiment=quickstart", "logger.mlflow.tracking_uri=http://127.0.0.1:9"],
}


def refuse(overrides: list[str], outputs: Path, repo: Path = ROOT) -> tuple[float, int, list[str], str]:
    """Wall seconds to exit, exit status, heavy top-level packages imported, the error line."""
    env = {**os.environ, "PROJECT_ROOT": str(outputs), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    started = time.perf_counter()
    command = [sys.executable, "-X", "importtime", str(repo / "run.py"), *overrides]
    result = subprocess.run(command, env=env, capture_output=True,
                            text=True, cwd=repo, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    imported = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            imported.add(name.split(".")[0])
    last = [ln for ln in result.stderr.splitlines() if not ln.startswith("import time:")][-1:]
    return elapsed, result.returncode, sorted(imported & set(HEAVY)), (last[0] if last else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose run.py to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"| bad value | median s (of {args.repeats}) | exit | heavy imports | message |")
        print("|---|---|---|---|---|")
        for name, overrides in CASES.items():
            runs = [refuse(overrides, Path(tmp), args.repo) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            _, status, heavy, message = runs[-1]
            print(f"| `{name}` | {seconds:.2f} | {status} | {', '.join(heavy) or 'none'} | {message[:90]} |")


if __name__ == "__main__":
    main()
