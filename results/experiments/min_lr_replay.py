"""Replay --min-lr on a finished run: where each value would have ended stage 2, and the
best test MSE up to there against the best of all its epochs.

    python results/experiments/min_lr_replay.py results/mnist-adamw-amx/history.csv

A stage ends before the first epoch whose lr (the history's lr column, the lr that
epoch trained with) is below --min-lr.
"""

import csv
import sys

MIN_LRS = [1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 1e-7]


def main(path, stage="2"):
    with open(path, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["stage"] == stage]
    best_of_all = min(float(row["test_loss"]) for row in rows)
    print(f"stage {stage}: {len(rows)} epochs, best test MSE {best_of_all:.7f}")
    print("min_lr,epochs_run,best_test_mse,vs_all_epochs")
    for min_lr in MIN_LRS:
        run = [row for row in rows if float(row["lr"]) >= min_lr]  # the lr only falls: the first epochs
        best = min(float(row["test_loss"]) for row in run)
        print(f"{min_lr:g},{len(run)},{best:.7f},{best / best_of_all - 1:+.2%}")


if __name__ == "__main__":
    main(sys.argv[1])
