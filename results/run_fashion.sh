#!/usr/bin/env bash
# The published Fashion-MNIST run, from Debian's dataset-fashion-mnist package (gzip IDX files):
# 20 + 10 epochs, every other flag at its default, then its metrics, pictures and shared weights.
# usage: results/run_fashion.sh OUT_DIR   (results/fashion-mnist came from /work/runs/fashion-muon)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 data=data-fashion
mkdir -p "$out" $data/FashionMNIST/raw
cp -n /usr/share/datasets/fashion-mnist/*.gz $data/FashionMNIST/raw/
python train.py --dataset fashion-mnist --stage 1 --epochs 20 --data-dir $data --out-dir "$out" > "$out/log.txt" 2>&1
python train.py --dataset fashion-mnist --stage 2 --epochs 10 --resume "$out/best.pt" --data-dir $data \
    --out-dir "$out" >> "$out/log.txt" 2>&1
python evaluate.py "$out/stage1_best.pt" --dataset fashion-mnist --data-dir $data > "$out/metrics_stage1.txt"
python evaluate.py "$out/best.pt" --dataset fashion-mnist --data-dir $data > "$out/metrics_stage2.txt"
python visualize.py --dataset fashion-mnist --checkpoint "$out/best.pt" --data-dir $data --out-dir "$out/images"
python checkpoints.py "$out/best.pt" "$out/autoencoder.pt"
