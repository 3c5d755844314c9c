#!/usr/bin/env bash
# What bench/gpu.py and the gpu-marked tests need on a GPU machine that has torch, transformers, peft
# and accelerate but no internet: wheels of the packages it lacks (trl and datasets with the two
# dependencies such images miss, bitsandbytes for QLoRA) in .whl/, and SmolLM2's tokenizer in
# .gpu-carry/smollm2-tokenizer. Both folders are git-ignored; together they are about 46 MB.
#
# Then, on the GPU machine, in the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:src python3 bench/gpu.py
#   PYTHONPATH=/tmp/site:src python3 -m pytest -m gpu tests/training/test_gpu.py -p no:cacheprovider
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPU_PYTHON=${GPU_PYTHON:-3.12}

mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  "${platforms[@]}" -d .whl \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2

"$PY" - <<'PYTHON'
from pathlib import Path

from transformers import AutoTokenizer

from openft.settings import SMOLLM2_PACKAGE_SOURCE
from openft.training.base_models import materialize

model = materialize(SMOLLM2_PACKAGE_SOURCE, Path.home() / ".cache" / "openft" / "base-models")
AutoTokenizer.from_pretrained(model).save_pretrained(".gpu-carry/smollm2-tokenizer")
PYTHON
du -sh .whl .gpu-carry
