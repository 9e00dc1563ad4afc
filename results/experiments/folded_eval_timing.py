"""Time train.py's evaluation of the test set with and without BatchNorm folded into the convolutions.

    python results/experiments/folded_eval_timing.py --checkpoint results/mnist/best.pt --data-dir ../shared/data

Both ways evaluate the same checkpoint in turn, --rounds times each; prints each one's
median seconds and test MSE (the same up to rounding).
"""

import argparse
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import data  # noqa: E402
import train  # noqa: E402
from model import load_checkpoint  # noqa: E402


def unfolded(model):
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    train.keep_freed_memory()
    model, _ = load_checkpoint(args.checkpoint)
    model = train.prepare_model(model)
    test_images = data.load_split(args.data_dir, train=False)[0]
    seconds, losses = {"folded": [], "unfolded": []}, {}
    for _ in range(args.rounds):
        for name in seconds:
            with mock.patch.object(train, "with_batchnorm_folded", train.with_batchnorm_folded
                                   if name == "folded" else unfolded):
                started = time.perf_counter()
                losses[name] = train.evaluate(model, test_images)
                seconds[name].append(time.perf_counter() - started)
    for name in seconds:
        print(f"{name:<9} {statistics.median(seconds[name]):.3f} s   test MSE {losses[name]:.10f}")


if __name__ == "__main__":
    main()
