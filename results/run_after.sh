#!/usr/bin/env bash
# Everything published beside the main run, one after another on a quiet machine:
# the checkpoint metrics, the throughput benchmark, the bf16-vs-fp32 check and Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data
mkdir -p results/fp32_check results/fashion-mnist

results/clean_log.sh results/mnist/run.log results/mnist/log.txt

python train.py --eval-only --resume results/mnist/stage1_best.pt --data-dir $data > results/mnist/metrics_stage1.txt
python train.py --eval-only --resume results/mnist/best.pt --data-dir $data > results/mnist/metrics_stage2.txt

python visualize.py --checkpoint results/mnist/best.pt --data-dir $data --out-dir results/comparison \
    --history results/mnist/history.csv results/reference_curves.csv

python bench.py --data-dir $data --levers 2>/dev/null | tee results/bench.txt

# bf16 autocast is the default only if it keeps the test loss within 1% of fp32 at equal
# epochs: the first 10 epochs of the published (bf16) run against the same run in fp32.
python train.py --stage 1 --epochs 10 --precision fp32 --data-dir $data --out-dir results/fp32_check \
    > results/fp32_check/run.log 2>&1

# Fashion-MNIST from Debian's dataset-fashion-mnist package (gzip IDX files).
mkdir -p data-fashion/FashionMNIST/raw
cp -n /usr/share/datasets/fashion-mnist/*.gz data-fashion/FashionMNIST/raw/
out=results/fashion-mnist
python train.py --dataset fashion-mnist --stage 1 --epochs 20 --data-dir data-fashion --out-dir $out > $out/run.log 2>&1
python train.py --dataset fashion-mnist --stage 2 --epochs 10 --resume $out/best.pt --data-dir data-fashion --out-dir $out >> $out/run.log 2>&1
python train.py --dataset fashion-mnist --eval-only --resume $out/stage1_best.pt --data-dir data-fashion > $out/metrics_stage1.txt
python train.py --dataset fashion-mnist --eval-only --resume $out/best.pt --data-dir data-fashion > $out/metrics_stage2.txt
python visualize.py --dataset fashion-mnist --checkpoint $out/best.pt --data-dir data-fashion --out-dir $out/images
results/clean_log.sh $out/run.log $out/log.txt
