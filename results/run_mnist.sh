#!/usr/bin/env bash
# The published MNIST run: the README's three commands from scratch, timed as a whole, then the
# metrics of both stages and the shipped weights (model, epoch, stage and test MSE; no paths).
# usage: results/run_mnist.sh OUT_DIR [DATA_DIR]   (DATA_DIR holds MNIST/raw/, downloaded if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 data=${2:-./data}
mkdir -p "$out"
started=$(date +%s)
python train.py --stage 1 --epochs 80 --data-dir "$data" --out-dir "$out" > "$out/log.txt" 2>&1
python train.py --stage 2 --resume "$out/best.pt" --data-dir "$data" --out-dir "$out" >> "$out/log.txt" 2>&1
python visualize.py --checkpoint "$out/best.pt" --data-dir "$data" --out-dir "$out/images" >> "$out/log.txt" 2>&1
echo "wall time of the recipe: $(( $(date +%s) - started )) s" >> "$out/log.txt"
python evaluate.py "$out/stage1_best.pt" --data-dir "$data" > "$out/metrics_stage1.txt"
python evaluate.py "$out/best.pt" --data-dir "$data" > "$out/metrics_stage2.txt"
python -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=True)
torch.save({k: c[k] for k in ('model_state_dict', 'epoch', 'stage', 'loss')}, sys.argv[2])" \
    "$out/best.pt" "$out/autoencoder.pt"
