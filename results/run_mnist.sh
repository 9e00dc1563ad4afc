#!/usr/bin/env bash
# The published MNIST run: the README's three commands, from scratch, on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=results/mnist
python train.py --stage 1 --epochs 80 --data-dir ../shared/data --out-dir $out
python train.py --stage 2 --resume $out/best.pt --data-dir ../shared/data --out-dir $out
python visualize.py --checkpoint $out/best.pt --data-dir ../shared/data --out-dir $out/images
