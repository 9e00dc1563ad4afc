"""Replay ReduceLROnPlateau's threshold on a finished run: the first epoch at which each
threshold would have trained with another lr than the run did. Up to that epoch the run
is what that threshold gives; stage 1 never reaching such an epoch means that threshold
leaves stage 1 as it was.

    python results/experiments/plateau_replay.py results/mnist-adamw-amx/history.csv

PyTorch's own scheduler is fed the run's test MSE, with train.py's default factor and
patience.
"""

import csv
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import train  # noqa: E402

THRESHOLDS = [1e-4, 5e-4, 1e-3, 2e-3, 5e-3]
DEFAULTS = train.parse_args([])


def first_other_lr(rows, threshold):
    """The first epoch whose lr this threshold would have set differently, or None."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float(rows[0]["lr"]))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=DEFAULTS.plateau_factor,
                                                           patience=DEFAULTS.plateau_patience, threshold=threshold)
    for row in rows:
        if abs(optimizer.param_groups[0]["lr"] / float(row["lr"]) - 1) > 1e-3:  # history rounds lr to 4 digits
            return int(row["epoch"])
        scheduler.step(float(row["test_loss"]))
    return None


def main(path):
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    print(path)
    print("stage,epochs,threshold,first_epoch_with_another_lr")
    for stage in ("1", "2"):
        stage_rows = [row for row in rows if row["stage"] == stage]
        for threshold in THRESHOLDS:
            print(f"{stage},{len(stage_rows)},{threshold:g},{first_other_lr(stage_rows, threshold) or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1])
