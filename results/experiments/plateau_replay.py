"""Replay ReduceLROnPlateau's threshold on a finished run: the first epoch at which each
threshold would have trained with another lr than the run did. Up to that epoch the run
is what that threshold gives; stage 1 never reaching such an epoch means that threshold
leaves stage 1 as it was.

    python results/experiments/plateau_replay.py results/mnist-amx/history.csv

The run's factor 0.5, patience 1 and eps 1e-8 are assumed (train.py's defaults).
"""

import csv
import sys

THRESHOLDS = [1e-4, 5e-4, 1e-3, 2e-3, 5e-3]
FACTOR, PATIENCE, EPS = 0.5, 1, 1e-8  # EPS: ReduceLROnPlateau skips smaller changes


def first_other_lr(rows, threshold):
    """The first epoch whose lr this threshold would have set differently, or None."""
    best, bad_epochs, lr = float("inf"), 0, float(rows[0]["lr"])
    for row in rows:
        if abs(lr / float(row["lr"]) - 1) > 1e-3:  # the history rounds lr to 4 digits
            return int(row["epoch"])
        loss = float(row["test_loss"])
        best, bad_epochs = (loss, 0) if loss < best * (1 - threshold) else (best, bad_epochs + 1)
        if bad_epochs > PATIENCE:
            lr, bad_epochs = (lr * FACTOR if lr * (1 - FACTOR) > EPS else lr), 0
    return None


def main(path):
    rows = list(csv.DictReader(open(path, newline="")))
    print(path)
    print("stage,epochs,threshold,first_epoch_with_another_lr")
    for stage in ("1", "2"):
        stage_rows = [row for row in rows if row["stage"] == stage]
        for threshold in THRESHOLDS:
            print(f"{stage},{len(stage_rows)},{threshold:g},{first_other_lr(stage_rows, threshold) or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1])
