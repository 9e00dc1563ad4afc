#!/usr/bin/env bash
# The README's two training commands with --batch-size 32, from scratch, on this machine:
# twice the optimizer steps per epoch, at about 1.5x the time per epoch (results/bench_batch32.txt).
# Made with plain Adam, the default before weight decay; --weight-decay 0 repeats it.
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data
out=results/mnist_batch32
mkdir -p $out
python train.py --stage 1 --epochs 80 --batch-size 32 --weight-decay 0 --data-dir $data --out-dir $out > $out/run.log 2>&1
python train.py --stage 2 --batch-size 32 --weight-decay 0 --resume $out/best.pt --data-dir $data --out-dir $out >> $out/run.log 2>&1
python train.py --eval-only --resume $out/stage1_best.pt --data-dir $data > $out/metrics_stage1.txt
python train.py --eval-only --resume $out/best.pt --data-dir $data > $out/metrics_stage2.txt
results/clean_log.sh $out/run.log $out/log.txt
