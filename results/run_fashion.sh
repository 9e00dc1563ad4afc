#!/usr/bin/env bash
# The published Fashion-MNIST run: 20 + 10 epochs, every other flag at its default, then its metrics,
# pictures and shared weights (model, epoch, stage and test MSE; no paths).
# usage: results/run_fashion.sh OUT_DIR [DATA_DIR]   (DATA_DIR holds FashionMNIST/raw/, downloaded if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 data=${2:-./data}
mkdir -p "$out"
python train.py --dataset fashion-mnist --stage 1 --epochs 20 --data-dir "$data" --out-dir "$out" > "$out/log.txt" 2>&1
python train.py --dataset fashion-mnist --stage 2 --epochs 10 --resume "$out/best.pt" --data-dir "$data" \
    --out-dir "$out" >> "$out/log.txt" 2>&1
python evaluate.py "$out/stage1_best.pt" --dataset fashion-mnist --data-dir "$data" > "$out/metrics_stage1.txt"
python evaluate.py "$out/best.pt" --dataset fashion-mnist --data-dir "$data" > "$out/metrics_stage2.txt"
python visualize.py --dataset fashion-mnist --checkpoint "$out/best.pt" --data-dir "$data" --out-dir "$out/images"
python -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=True)
torch.save({k: c[k] for k in ('model_state_dict', 'epoch', 'stage', 'loss')}, sys.argv[2])" \
    "$out/best.pt" "$out/autoencoder.pt"
