#!/usr/bin/env bash
# The shipped MNIST model on pictures of digits: framed (the default) and plainly resized.
# usage: results/own-digits/measure.sh PICTURES_DIR > results/own-digits/mse.txt
# (PICTURES_DIR made by make_pictures.py; MNIST's own test digits also through the IDX files)
set -euo pipefail
cd "$(dirname "$0")/../.."
pictures=$1 model=results/mnist/autoencoder.pt
echo "mnist IDX files: $(python evaluate.py $model --data-dir ../shared/data | tail -n 1)"
for style in mnist-test light-on-dark scanned photographed; do
    for resize in "" --plain-resize; do
        echo "$style ${resize:-framed}: $(python evaluate.py $model --images "$pictures/$style" $resize | tail -n 1)"
    done
done
