#!/usr/bin/env bash
# The GPU check (issue 18): run from anywhere, on the GPU machine or, with --dry-run, on a CPU.
#   bash benchmarks/gpu/run.sh OUTDIR              # on the H200: installs .whl/ into a folder, ~8 minutes
#   bash benchmarks/gpu/run.sh --dry-run OUTDIR    # here: the same steps, tiny sizes, CPU, about a minute
# OUTDIR receives summary.md, tables.md, results.json and logs.tar.gz. PYTHON picks the interpreter
# (default: python3, the one that holds torch on the GPU machine). benchmarks/gpu/check.py does the work.
set -u
cd "$(dirname "$0")/../.." || exit 2
exec "${PYTHON:-python3}" benchmarks/gpu/check.py "$@"
