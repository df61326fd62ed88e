"""Download, here, the wheels the GPU machine lacks, into <repo>/.whl (git-ignored), and check the set.

The GPU machine (Python 3.12, x86-64, no package registry) has torch, lightning, transformers, tokenizers
and the packages of machine_packages.txt, but not Hydra, OmegaConf, MLflow, Optuna or torchdata. This
fetches an explicit, pinned list (the versions the project is tested with here), then checks that

- every requirement of every carried wheel (evaluated for CPython 3.12 on Linux x86-64, extras ignored) is
  either carried or already on the machine, and a carried requirement's version satisfies its specifier;
- the wheels together stay under --max-mib, so that the working tree plus .whl fits the 64 MiB a device
  call may carry.

    python benchmarks/gpu/fetch_wheels.py                 # -> .whl/, prints the total size
    python benchmarks/gpu/fetch_wheels.py --check-only    # check an existing .whl/ without downloading

`mlflow-skinny` replaces `mlflow`: the project only logs to and reads from a sqlite store, which needs
mlflow's client code (in mlflow-skinny) plus SQLAlchemy and Alembic, not mlflow's UI server. `datasets` is
not carried: no code on the GPU check's path imports it (C4 streams without it; only the versions record
names it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
MACHINE_PACKAGES = Path(__file__).with_name("machine_packages.txt")

# name -> version. Grouped by who needs them; each group's own requirements follow it.
PINS = {
    # Hydra (run.py, every config)
    "hydra-core": "1.3.8", "omegaconf": "2.3.1", "antlr4-python3-runtime": "4.9.3",
    # MLflow client and its sqlite store (the default logger; the end-to-end check reads it back)
    "mlflow-skinny": "3.17.2", "sqlalchemy": "2.1.9", "alembic": "1.20.1", "mako": "1.4.3",
    "cachetools": "7.3.3", "databricks-sdk": "0.167.0", "google-auth": "2.63.0", "pyasn1-modules": "0.4.2",
    "pyasn1": "0.6.5", "cryptography": "50.0.2", "cffi": "2.1.1", "pycparser": "3.12",
    "fastapi": "0.165.0", "starlette": "1.10.0", "pydantic": "2.14.4", "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0", "typing-inspection": "0.4.5", "gitpython": "3.2.1", "gitdb": "4.0.12",
    "smmap": "5.0.3", "importlib-metadata": "9.1.0", "opentelemetry-api": "1.45.2",
    "opentelemetry-proto": "1.45.2", "opentelemetry-sdk": "1.45.2",
    "opentelemetry-semantic-conventions": "0.66b2", "python-dotenv": "1.2.4", "sqlparse": "0.6.1",
    "uvicorn": "0.55.0",
    # Optuna (the sweeper; declared by the project, small once SQLAlchemy and Alembic are carried)
    "optuna": "5.1.0", "colorlog": "6.12.0",
    # torchdata (the data module's StatefulDataLoader)
    "torchdata": "0.11.0",
}
# Published as a source archive only: built here into a pure-Python (py3-none-any) wheel.
SDIST_ONLY = {"antlr4-python3-runtime"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64"]


def machine_packages() -> set[str]:
    names = set()
    for line in MACHINE_PACKAGES.read_text().splitlines():
        if not line.startswith("#"):
            names.update(canonicalize_name(n) for n in line.split())
    return names


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def download(dest: Path, python_version: str) -> None:
    dest.mkdir(exist_ok=True)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    binary = [f"{name}=={version}" for name, version in PINS.items() if name not in SDIST_ONLY]
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
        "--implementation", "cp", *platform_args, "-d", str(dest), *binary)
    for name in SDIST_ONLY:
        pip("wheel", "--no-deps", "--no-binary=:all:", "-w", str(dest), f"{name}=={PINS[name]}")


def wheel_metadata(path: Path) -> tuple[str, Version, list[Requirement]]:
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(meta).decode())
    return canonicalize_name(name), version, [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def check(dest: Path, python_version: str, max_mib: float) -> list[str]:
    """Problems with the wheel set in ``dest`` (empty: the set is complete, unique, pinned and small)."""
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.3",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   "os_name": "posix", "extra": ""}
    on_machine = machine_packages()
    wheels = sorted(dest.glob("*.whl"))
    carried: dict[str, Version] = {}
    problems = []
    for path in wheels:
        name, version, _ = wheel_metadata(path)
        if name in carried:
            problems.append(f"two wheels of {name} ({carried[name]}, {version}): pip stops on duplicates")
        carried[name] = version
    for name, version in PINS.items():
        if carried.get(canonicalize_name(name)) != Version(version):
            problems.append(f"{name}=={version} is not in {dest}")
    for name in carried:
        if name in on_machine:
            problems.append(f"{name} is already on the machine: carrying it would shadow the machine's copy")
    for path in wheels:
        name, _, requirements = wheel_metadata(path)
        for req in requirements:
            if req.marker is not None and not req.marker.evaluate(environment):
                continue  # another platform or Python, or an extra
            needed = canonicalize_name(req.name)
            if needed in carried:
                if not req.specifier.contains(carried[needed], prereleases=True):
                    problems.append(f"{name} needs {req}, the carried {needed} is {carried[needed]}")
            elif needed not in on_machine:
                problems.append(f"{name} needs {req}, which is neither carried nor on the machine")
    total = sum(p.stat().st_size for p in wheels)
    if total > max_mib * 2**20:
        problems.append(f"the wheels take {total / 2**20:.1f} MiB, over the {max_mib:.0f} MiB allowed")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="folder for the wheels (default: .whl)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default: 3.12)")
    parser.add_argument("--max-mib", type=float, default=50.0,
                        help="the most the wheels may take, leaving room for the tree in 64 MiB (default: 50)")
    parser.add_argument("--check-only", action="store_true", help="check --dest without downloading")
    args = parser.parse_args(argv)
    if not args.check_only:
        if args.dest.exists():  # a stale version beside a new pin would make two of one package
            shutil.rmtree(args.dest)
        with tempfile.TemporaryDirectory() as tmp:
            download(Path(tmp), args.python_version)
            shutil.copytree(tmp, args.dest)
    if not args.dest.is_dir():
        print(f"error: no wheel folder {args.dest}: run this script without --check-only first", file=sys.stderr)
        return 2
    wheels = sorted(args.dest.glob("*.whl"))
    for path in wheels:
        print(f"{path.stat().st_size / 2**20:8.2f} MiB  {path.name}")
    total = sum(p.stat().st_size for p in wheels)
    print(f"{total / 2**20:8.2f} MiB  total, {len(wheels)} wheels in {args.dest}")
    problems = check(args.dest, args.python_version, args.max_mib)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"closure: every requirement (Python {args.python_version}, Linux x86-64) is carried or on the GPU machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
