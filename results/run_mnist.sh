#!/usr/bin/env bash
# A published MNIST run: the README's three commands, from scratch, timed as a whole.
# usage: results/run_mnist.sh OUT_DIR   (results/mnist came from /work/runs/mnist-muon)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 data=../shared/data
mkdir -p "$out"
started=$(date +%s)
python train.py --stage 1 --epochs 80 --data-dir $data --out-dir "$out" > "$out/log.txt" 2>&1
python train.py --stage 2 --resume "$out/best.pt" --data-dir $data --out-dir "$out" >> "$out/log.txt" 2>&1
python visualize.py --checkpoint "$out/best.pt" --data-dir $data --out-dir "$out/images" >> "$out/log.txt" 2>&1
echo "wall time of the recipe: $(( $(date +%s) - started )) s" >> "$out/log.txt"
python evaluate.py "$out/stage1_best.pt" --data-dir $data > "$out/metrics_stage1.txt"
python evaluate.py "$out/best.pt" --data-dir $data > "$out/metrics_stage2.txt"
