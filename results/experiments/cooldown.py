"""Continue a stage-1 checkpoint for a few epochs with the lr multiplied by a factor
after every epoch, keeping its weight average, and print the test MSE each epoch.

    python results/experiments/cooldown.py results/mnist_adam/stage1_best.pt --factor 0.5 --epochs 8

It asks how much an lr that falls at the end of stage 1 would buy over the constant lr
of the published runs. Prints CSV.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import data  # noqa: E402
import train  # noqa: E402
from model import AutoEncoder, load_checkpoint  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--factor", type=float, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    _, checkpoint = load_checkpoint(args.checkpoint)
    saved = checkpoint["args"]
    model = train.prepare_model(AutoEncoder())
    model.load_state_dict(checkpoint["train_model_state_dict"])
    optimizer = train.make_optimizer(model, saved["lr"], weight_decay=saved.get("weight_decay", 0.0))
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    average = train.WeightAverage(model, saved["ema_decay"], warmup=False)
    average.model.load_state_dict(checkpoint["model_state_dict"])
    generator = torch.Generator()
    generator.set_state(checkpoint["generator_state"])
    (train_images, _), (test_images, _) = [data.load_split(args.data_dir, train=split) for split in (True, False)]
    print("epoch,lr,test_loss_ema,test_loss_raw,seconds")
    for epoch in range(checkpoint["epoch"] + 1, checkpoint["epoch"] + args.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train.train_epoch(model, optimizer, train_images, saved["batch_size"], generator, bf16=True,
                          average=average)
        losses = [train.evaluate(average.model, test_images), train.evaluate(model, test_images)]
        print(f"{epoch},{lr:.3e},{losses[0]:.7f},{losses[1]:.7f},{time.perf_counter() - started:.1f}", flush=True)
        for group in optimizer.param_groups:
            group["lr"] *= args.factor


if __name__ == "__main__":
    main()
