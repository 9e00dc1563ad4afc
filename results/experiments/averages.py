"""One stage-1 run that keeps several weight averages and evaluates each every epoch.

    python results/experiments/averages.py --lr 5e-3 --decays 0.999 0.998 0.995 --epochs 24

All averages come from the same training trajectory, so their test losses differ only
by the averaging, not by the chance of two runs. The 0.999 column is the stage-1 run
that `train.py --lr LR --weight-decay 0` makes with the same seed, number for number. Prints CSV.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import data  # noqa: E402
import fast  # noqa: E402
import train  # noqa: E402
from model import AutoEncoder  # noqa: E402


class SeveralAverages:
    def __init__(self, model, decays):
        self.averages = [train.WeightAverage(model, decay) for decay in decays]

    def update(self, step):
        for average in self.averages:
            average.update(step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--decays", type=float, nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    flags = train.parse_args(["--lr", str(args.lr), "--weight-decay", "0", "--seed", str(args.seed),
                              "--epochs", str(args.epochs), "--precision", "bf16"])
    torch.manual_seed(args.seed)
    model = fast.prepare_model(AutoEncoder())
    (train_images, _), (test_images, _) = [data.load_split(args.data_dir, train=split) for split in (True, False)]
    run = train.new_run(flags, model, torch.device("cpu"))
    averages = run.average = SeveralAverages(model, args.decays)
    print(",".join(["epoch", *(f"test_loss_ema{decay:g}" for decay in args.decays), "test_loss_raw", "seconds"]))
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        train.train_epoch(run, train_images, flags, epoch)
        losses = [train.mean_test_mse(average.model, test_images) for average in averages.averages]
        losses.append(train.mean_test_mse(model, test_images))
        print(",".join([str(epoch), *(f"{loss:.7f}" for loss in losses), f"{time.perf_counter() - started:.1f}"]),
              flush=True)


if __name__ == "__main__":
    main()
