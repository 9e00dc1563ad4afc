"""Time train.py against a plain PyTorch loop over the same model, taking turns.

    python results/bench.py --data-dir ./data --subset 20000

The plain loop is what most MNIST examples do: torchvision's MNIST through a DataLoader (batch 64,
shuffled, per-sample ToTensor; in stage 2 per-sample PIL RandomPerspective and RandomRotation), the
default memory format, fp32, Adam, then the test set in batches of 64. This project's pipeline is
train.py itself, run as a user runs it, one epoch a turn (continued with --resume), its epoch time
read from history.csv. The two take turns, --rounds epochs each, so that a slow spell of a shared
machine hits both; each one's median epoch counts, training and test evaluation included.
--levers also times train.py with one of its speed flags changed.
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)  # the repo's scripts, whatever the working folder

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

import data  # noqa: E402
from model import AutoEncoder  # noqa: E402

PLAIN_BATCH_SIZE = 64
LEVERS = {
    "fp32 instead of --precision auto": ["--precision", "fp32"],
    "without the weight average": ["--ema-decay", "0"],
}


class PlainLoop:
    """The textbook loop: a DataLoader of per-image transforms, fp32, Adam."""

    def __init__(self, args, stage, device):
        warps = (
            [
                transforms.RandomPerspective(data.DISTORTION_SCALE, data.PERSPECTIVE_P),
                transforms.RandomRotation(data.MAX_ROTATION_DEGREES),
            ]
            if stage == 2
            else []
        )
        self.loaders = [self.loader(args, train, warps if train else []) for train in (True, False)]
        torch.manual_seed(0)
        self.model, self.device = AutoEncoder().to(device), device
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    @staticmethod
    def loader(args, train, warps):
        transform = transforms.Compose([*warps, transforms.ToTensor()])
        dataset = datasets.MNIST(args.data_dir, train=train, transform=transform)
        return DataLoader(
            Subset(dataset, range(min(args.subset or len(dataset), len(dataset)))),
            batch_size=PLAIN_BATCH_SIZE,
            shuffle=train,
        )

    def epoch_seconds(self):
        started = time.perf_counter()
        self.model.train()
        for images, _ in self.loaders[0]:
            images = images.to(self.device)
            loss = F.mse_loss(self.model(images)[0], images)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.model.eval()
        with torch.no_grad():
            for images, _ in self.loaders[1]:
                F.mse_loss(
                    self.model(images.to(self.device))[0], images.to(self.device), reduction="sum"
                ).item()
        return time.perf_counter() - started


class TrainPy:
    """train.py run one epoch at a time, each run continuing the last with --resume."""

    def __init__(self, args, stage, folder, start_checkpoint, flags=()):
        self.stage, self.folder, self.epochs, self.resume = stage, folder, 0, start_checkpoint
        self.command = [
            sys.executable,
            os.path.join(HERE, "train.py"),
            "--stage",
            str(stage),
            "--data-dir",
            args.data_dir,
            "--out-dir",
            folder,
            "--device",
            args.device,
            "--batch-size",
            str(args.batch_size),
            *(["--subset", str(args.subset)] if args.subset else []),
            *flags,
        ]

    def epoch_seconds(self):
        self.epochs += 1
        resume = ["--resume", self.resume] if self.resume else []
        subprocess.run(
            [*self.command, "--epochs", str(self.epochs), *resume],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.resume = os.path.join(self.folder, "last.pt")
        with open(os.path.join(self.folder, "history.csv"), newline="") as file:
            rows = [row for row in csv.DictReader(file) if row["stage"] == str(self.stage)]
        return float(rows[-1]["seconds"])


def images_per_second(pipelines, num_images, rounds):
    """One epoch of each pipeline in turn, `rounds` times; each one's median rate."""
    seconds = [[] for _ in pipelines]
    for _ in range(rounds):
        for times, pipeline in zip(seconds, pipelines):
            times.append(pipeline.epoch_seconds())
    return [num_images / statistics.median(times) for times in seconds]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data.add_arguments(parser)
    parser.add_argument(
        "--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2], help="(default: 1 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="epochs of each, taken in turn (default: 3)"
    )
    parser.add_argument("--subset", type=int, default=None, help="first N images only")
    parser.add_argument("--batch-size", type=int, default=64, help="train.py's (default: 64)")
    parser.add_argument(
        "--levers", action="store_true", help="also time train.py with each of LEVERS' flags"
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "subset", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        device = data.choose_device(args.device)
        num_images = len(data.load_split(args.data_dir, train=True)[0][: args.subset])
    except data.InputError as error:
        return data.fail(error)
    data.say(
        f"device: {device}, CPU capability: {torch.backends.cpu.get_cpu_capability()}, threads: "
        f"{torch.get_num_threads()}, torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        start = os.path.join(
            scratch, "start"
        )  # stage 2 starts from a stage-1 checkpoint, as in the recipe
        TrainPy(args, 1, start, None).epoch_seconds()
        for stage in args.stages:
            start_checkpoint = os.path.join(start, "last.pt") if stage == 2 else None
            ours = TrainPy(args, stage, os.path.join(scratch, f"stage{stage}"), start_checkpoint)
            plain, rate = images_per_second(
                [PlainLoop(args, stage, device), ours], num_images, args.rounds
            )
            data.say(
                f"stage {stage}: plain loop {plain:7.0f} img/s   this project {rate:7.0f} img/s   "
                f"ratio {rate / plain:.2f}x"
            )
            for number, (name, flags) in enumerate(LEVERS.items() if args.levers else []):
                lever = TrainPy(
                    args,
                    stage,
                    os.path.join(scratch, f"stage{stage}-{number}"),
                    start_checkpoint,
                    flags,
                )
                [slower] = images_per_second([lever], num_images, args.rounds)
                data.say(
                    f"stage {stage}:   {name:<36} {slower:7.0f} img/s   "
                    f"the defaults {rate / slower - 1:+.0%} faster"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
