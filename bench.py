"""Time this project's training pipeline against a plain PyTorch loop, side by side.

    python bench.py --data-dir ./data

The plain loop is what most MNIST examples do: torchvision's MNIST through a DataLoader
(batch 64, shuffled, per-sample ToTensor; for stage 2 per-sample PIL RandomPerspective
and RandomRotation), the default memory format, fp32, Adam, then the test set in
batches of 64, over the model exactly as model.py defines it (nn's layers, as the
reference). This project's pipeline is train.py itself, run as a user runs it, one
epoch per turn (continued with --resume), its epoch time read from history.csv. The two
take turns, --rounds epochs each, so that a slow spell of a shared machine hits both;
the numbers are training images per second of wall time in each one's median epoch,
training and test evaluation included. --levers also times train.py with one speed
lever (fast.py) changed at a time.
"""

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

import data
import fast
from checkpoints import read_history
from model import AutoEncoder

PLAIN_BATCH_SIZE = 64
HERE = os.path.dirname(os.path.abspath(__file__))
# Each row of --levers changes one thing in train.py's run: (its flags, the fast.py lever it turns off).
LEVERS = {
    "fp32 instead of --precision auto": (["--precision", "fp32"], ""),
    "without channels_last": ([], "channels_last"),
    "AdamW instead of Muon (the optimizer's own cost)": (["--optimizer", "adamw"], ""),
    "AdamW without its fused kernel": (["--optimizer", "adamw"], "fused_optimizer"),
    "with nn's convolutions for the 1x1 layers": ([], "matrix_layers"),
    "with glibc's default allocator settings": ([], "keep_freed_memory"),
    "without the weight average (EMA)": (["--ema-decay", "0"], ""),
}


def plain_loader(data_dir, train_split, subset, augment):
    steps = [transforms.RandomPerspective(distortion_scale=data.DISTORTION_SCALE, p=data.PERSPECTIVE_P),
             transforms.RandomRotation((-data.MAX_ROTATION_DEGREES, data.MAX_ROTATION_DEGREES))] if augment else []
    dataset = datasets.MNIST(data_dir, train=train_split, download=True,
                             transform=transforms.Compose([*steps, transforms.ToTensor()]))
    if subset:
        dataset = Subset(dataset, range(min(subset, len(dataset))))
    return DataLoader(dataset, batch_size=PLAIN_BATCH_SIZE, shuffle=train_split)


def plain_epoch(model, optimizer, train_loader, test_loader, device):
    """The textbook loop: one epoch of training, then the test loss."""
    model.train()
    for images, _ in train_loader:
        images = images.to(device)
        reconstruction, _ = model(images)
        loss = F.mse_loss(reconstruction, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    total = 0.0
    with torch.no_grad():
        for images, _ in test_loader:
            images = images.to(device)
            total += F.mse_loss(model(images)[0], images, reduction="sum").item()
    return total / (len(test_loader.dataset) * 28 * 28)


# The plain loop that this worker process times; each worker has one.
worker_epoch = None


def start_plain_worker(args, stage, device, matrix_layers):
    global worker_epoch
    torch.manual_seed(0)
    train_loader = plain_loader(args.data_dir, True, args.subset, augment=stage == 2)
    test_loader = plain_loader(args.data_dir, False, args.subset, augment=False)
    model = AutoEncoder().to(device)
    if matrix_layers:
        model = fast.with_matrix_product_layers(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    worker_epoch = lambda: plain_epoch(model, optimizer, train_loader, test_loader, device)  # noqa: E731


def time_plain_epoch(device):
    started = time.perf_counter()
    worker_epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


class PlainLoop:
    """The plain loop in a worker process of its own, so that nothing train.py sets for
    its process (the allocator setting) reaches it."""

    def __init__(self, args, stage, device, matrix_layers=False):
        spawn = multiprocessing.get_context("spawn")
        self.device = device
        self.worker = ProcessPoolExecutor(1, spawn, start_plain_worker, (args, stage, device, matrix_layers))

    def epoch_seconds(self):
        return self.worker.submit(time_plain_epoch, self.device).result()

    def close(self):
        self.worker.shutdown()


class TrainPy:
    """train.py run one epoch at a time, each run continuing the last with --resume."""

    def __init__(self, args, stage, folder, start_checkpoint, flags=(), levers_off=""):
        self.stage, self.folder, self.epochs = stage, folder, 0
        self.resume = start_checkpoint
        self.command = [sys.executable, os.path.join(HERE, "train.py"), "--stage", str(stage),
                        "--data-dir", args.data_dir, "--out-dir", folder, "--batch-size", str(args.batch_size),
                        "--device", args.device, *(["--subset", str(args.subset)] if args.subset else []), *flags]
        self.environment = {**os.environ, "FAST_LEVERS_OFF": levers_off}

    def epoch_seconds(self):
        self.epochs += 1
        resume = ["--resume", self.resume] if self.resume else []
        subprocess.run([*self.command, "--epochs", str(self.epochs), *resume], env=self.environment,
                       check=True, stdout=subprocess.DEVNULL)
        self.resume = os.path.join(self.folder, "last.pt")
        [row] = [row for row in read_history(os.path.join(self.folder, "history.csv"))
                 if (int(row["stage"]), int(row["epoch"])) == (self.stage, self.epochs)]
        return float(row["seconds"])

    def close(self):
        pass


def images_per_second(pipelines, num_images, rounds):
    """One epoch of each pipeline in turn, `rounds` times; each one's median rate."""
    seconds = [[] for _ in pipelines]
    try:
        for _ in range(rounds):
            for times, pipeline in zip(seconds, pipelines):
                times.append(pipeline.epoch_seconds())
    finally:
        for pipeline in pipelines:
            pipeline.close()
    return [num_images / statistics.median(times) for times in seconds]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data.add_arguments(parser, dataset=False)
    parser.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2],
                        help="stages to time (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="epochs of each pipeline, taken in turn; the median counts (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=None, help="first N images only")
    parser.add_argument("--batch-size", type=int, default=64,
                        help=f"train.py's batch size; the plain loop's stays {PLAIN_BATCH_SIZE} (default: %(default)s)")
    parser.add_argument("--levers", action="store_true",
                        help="also time train.py with one speed lever changed at a time")
    args = parser.parse_args(argv)
    for name in ("rounds", "subset", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = data.choose_device(args.device)
    bf16, reason = fast.training_precision("auto", device)
    precision = f"{'bf16 autocast' if bf16 else 'fp32'} ({reason})"
    print(f"device: {device}, CPU capability: {torch.backends.cpu.get_cpu_capability()}, "
          f"threads: {torch.get_num_threads()}, training precision: {precision}, torch {torch.__version__}")
    num_images = len(data.load_split(args.data_dir, train=True)[0][: args.subset])
    with tempfile.TemporaryDirectory() as scratch:
        # Stage 2 starts from a stage-1 checkpoint, as in the README's recipe.
        start = os.path.join(scratch, "start")
        TrainPy(args, 1, start, None).epoch_seconds()
        start_checkpoint = {1: None, 2: os.path.join(start, "last.pt")}
        for stage in args.stages:
            def train_py(name, flags=(), levers_off=""):
                return TrainPy(args, stage, os.path.join(scratch, f"stage{stage}-{name}"),
                               start_checkpoint[stage], flags, levers_off)

            ours = train_py("defaults")
            plain, ours_rate = images_per_second([PlainLoop(args, stage, device), ours], num_images, args.rounds)
            print(f"stage {stage}: plain loop {plain:7.0f} img/s   this project {ours_rate:7.0f} img/s   "
                  f"ratio {ours_rate / plain:.2f}x", flush=True)
            print(f"stage {stage}: this project timed as: {' '.join(ours.command[1:])} --epochs N --resume ...",
                  flush=True)
            if not args.levers:
                continue
            for number, (name, (flags, levers_off)) in enumerate(LEVERS.items()):
                [rate] = images_per_second([train_py(str(number), flags, levers_off)], num_images, args.rounds)
                print(f"stage {stage}:   {name:<48} {rate:7.0f} img/s   ratio {rate / plain:.2f}x   "
                      f"defaults {ours_rate / rate - 1:+.0%} faster", flush=True)
            [rate] = images_per_second([PlainLoop(args, stage, device, matrix_layers=True)], num_images, args.rounds)
            print(f"stage {stage}: plain loop with the matrix-product layers {rate:7.0f} img/s   "
                  f"this project's ratio to it {ours_rate / rate:.2f}x", flush=True)


if __name__ == "__main__":
    main()
