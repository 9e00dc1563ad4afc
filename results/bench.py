"""train.py against the textbook loop, as whole processes taking turns: one epoch each, start-up
and data loading included, on the same machine.

    python results/bench.py --data-dir ../shared/data [--pairs 5] [--stages 1 2] [--epochs 1]

The textbook loop (`python results/bench.py --plain-epoch --stage S`) is what most MNIST examples
do: torchvision's MNIST through a DataLoader (batch 64, shuffled, per-image ToTensor; in stage 2
per-image PIL RandomPerspective and RandomRotation), the default memory format, fp32, Adam, then
the test set in batches of 64. This project's run is `python train.py --epochs N` (stage 2: from
a stage-1 checkpoint made first, not timed); --epochs 10 times its way to the reference's final
test MSE against one plain epoch. The two run in turn, --pairs times, so that a slow
spell of a shared machine hits both; printed: each one's median wall seconds, and the median (and
range) of the ratios pair by pair.
"""

import argparse
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
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

import data  # noqa: E402
from model import AutoEncoder  # noqa: E402

PLAIN_BATCH_SIZE = 64


def plain_epoch(data_dir, stage):
    """One epoch of the textbook loop and its test pass; returns the test MSE."""
    warps = [transforms.RandomPerspective(data.DISTORTION_SCALE, data.PERSPECTIVE_P),
             transforms.RandomRotation(data.MAX_ROTATION_DEGREES)] if stage == 2 else []
    loaders = [DataLoader(datasets.MNIST(data_dir, train=train, transform=transforms.Compose(
        [*(warps if train else []), transforms.ToTensor()])), batch_size=PLAIN_BATCH_SIZE,
        shuffle=train) for train in (True, False)]
    torch.manual_seed(0)
    model = AutoEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for images, _ in loaders[0]:
        loss = F.mse_loss(model(images)[0], images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        total = sum(F.mse_loss(model(images)[0], images, reduction="sum").item()
                    for images, _ in loaders[1])
    return total / len(loaders[1].dataset) / data.IMAGE_SIZE**2


def seconds(command):
    """Wall seconds of a command run to its end; a failure stops the bench with its output."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise data.InputError(f"{' '.join(command)} failed: {result.stderr.strip()[-300:]}")
    return time.perf_counter() - started


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="./data", help="holds MNIST/raw/ (default: ./data)")
    parser.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2])
    parser.add_argument("--pairs", type=int, default=5, help="epochs of each, in turn (default: 5)")
    parser.add_argument("--epochs", type=int, default=1, help="of train.py a run (default: 1)")
    parser.add_argument("--plain-epoch", action="store_true", help="run one textbook epoch only")
    parser.add_argument("--stage", type=int, choices=[1, 2], default=1, help="with --plain-epoch")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.epochs < 1:
        parser.error("arguments --pairs and --epochs: must be at least 1")
    return args


def main(argv):
    try:
        args = parse_args(argv)
    except SystemExit as exit:
        return exit.code
    if args.plain_epoch:
        data.say(f"test MSE {plain_epoch(args.data_dir, args.stage):.7f}")
        return 0
    python, train = sys.executable, os.path.join(HERE, "train.py")
    try:
        data.load_split(args.data_dir, train=True)  # missing data: one line, before any timing
        capability, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
        data.say(f"CPU capability {capability}, {threads} threads, torch {torch.__version__}; wall"
                 f" seconds of one epoch process")
        with tempfile.TemporaryDirectory() as scratch:
            flags = ["--data-dir", args.data_dir, "--device", "cpu"]
            start = os.path.join(scratch, "stage1")
            if 2 in args.stages:  # stage 2's starting point
                seconds([python, train, *flags, "--epochs", "1", "--out-dir", start])
            for stage in args.stages:
                plain = [python, __file__, "--plain-epoch", "--stage", str(stage), "--data-dir",
                         args.data_dir]
                ours = [python, train, *flags, "--epochs", str(args.epochs), "--stage", str(stage),
                        "--overwrite", "--out-dir", os.path.join(scratch, f"run{stage}")]
                if stage == 2:
                    ours += ["--resume", os.path.join(start, "best.pt")]
                times = [(seconds(plain), seconds(ours)) for _ in range(args.pairs)]
                ratios = sorted(theirs / mine for theirs, mine in times)
                plain_s, ours_s = (statistics.median(t[k] for t in times) for k in (0, 1))
                data.say(f"stage {stage}: plain loop {plain_s:6.1f} s   train.py --epochs"
                         f" {args.epochs} {ours_s:6.1f} s   ratio {statistics.median(ratios):.2f}x"
                         f" ({ratios[0]:.2f}-{ratios[-1]:.2f}), {args.pairs} pairs")
    except data.InputError as error:
        return data.fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
