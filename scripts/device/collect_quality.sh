#!/usr/bin/env bash
# Bring back what scripts/device/quality.sh wrote, without weights: one tar.gz under $1 (the call's $OUT).
OUT=${1:?usage: collect_quality.sh OUT}; Q=${Q:-/tmp/q}
python scripts/device/quality_table.py "$Q" 2>&1 | tee "$OUT/table.txt"
tar czf "$OUT/quality.tgz" -C "$Q" --exclude='*.safetensors' --exclude='*.bin' --exclude='checkpoint-*' \
  --exclude='*.pt' --exclude='*.pth' . 2>/dev/null
ls -la "$OUT"
