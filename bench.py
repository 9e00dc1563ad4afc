"""Time this project's training pipeline against a plain PyTorch loop, side by side.

    python bench.py --data-dir ../shared/data

The plain loop is what most MNIST examples do: torchvision's MNIST through a DataLoader
(batch 64, shuffled, per-sample ToTensor; for stage 2 per-sample PIL RandomPerspective
and RandomRotation), the default memory format, fp32, Adam, then the test set in
batches of 64. This project's pipeline is train.py's own train_epoch and evaluate with
its defaults. Both run whole epochs, evaluation included, on the same model; the
numbers are training images per second of wall time.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

import data
import train
from model import AutoEncoder

PLAIN_BATCH_SIZE = 64
# Each row of --levers changes one thing in this project's pipeline.
LEVERS = {
    "without bf16 autocast (fp32)": {"bf16": False},
    "without channels_last": {"channels_last": False},
    "without the weight average (EMA)": {"ema": False},
    "with torch.compile": {"compile": True},
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


def time_plain(args, stage, device):
    train_loader = plain_loader(args.data_dir, True, args.subset, augment=stage == 2)
    test_loader = plain_loader(args.data_dir, False, args.subset, augment=False)
    model = AutoEncoder().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(args.epochs):
        plain_epoch(model, optimizer, train_loader, test_loader, device)
    synchronize(device)
    return args.epochs * len(train_loader.dataset) / (time.perf_counter() - started)


def time_project(args, stage, device, images, channels_last=True, bf16=True, ema=True, compile=False):
    """Whole epochs of train.py's own pipeline; each lever can be switched off to see what it buys."""
    defaults = train.parse_args([])
    train_images, test_images = images
    model = AutoEncoder().to(device)
    if channels_last:
        model = train.prepare_model(model)
    average = train.WeightAverage(model, defaults.ema_decay) if ema else None
    optimizer = torch.optim.Adam(model.parameters(), lr=train.STAGE_LR[stage])
    generator = torch.Generator(device=device).manual_seed(0)
    if compile:
        model.compile()
    started = time.perf_counter()
    for _ in range(args.epochs):
        train.train_epoch(model, optimizer, train_images, defaults.batch_size, generator, augment=stage == 2,
                          bf16=bf16 and train.use_bf16(defaults.precision, device),
                          average=average)
        train.evaluate(average.model if average else model, test_images)
    synchronize(device)
    return args.epochs * len(train_images) / (time.perf_counter() - started)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="./data", help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2],
                        help="stages to time (default: 1 2)")
    parser.add_argument("--epochs", type=train.positive(int), default=1, help="whole epochs per measurement (default: %(default)s)")
    parser.add_argument("--subset", type=train.positive(int), default=None, help="first N images only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto: cuda, then mps, then cpu (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile this project's model")
    parser.add_argument("--levers", action="store_true",
                        help="also time the project's pipeline with one speed lever changed at a time")
    args = parser.parse_args(argv)
    device = train.choose_device(args.device)
    torch.manual_seed(0)
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    images = [data.load_split(args.data_dir, train=split)[0][: args.subset].to(device) for split in (True, False)]
    for stage in args.stages:
        plain = time_plain(args, stage, device)
        ours = time_project(args, stage, device, images, compile=args.compile)
        print(f"stage {stage}: plain loop {plain:7.0f} img/s   this project {ours:7.0f} img/s   "
              f"ratio {ours / plain:.2f}x", flush=True)
        if args.levers:
            for name, switches in LEVERS.items():
                rate = time_project(args, stage, device, images, **switches)
                print(f"stage {stage}:   {name:<34} {rate:7.0f} img/s   ratio {rate / plain:.2f}x", flush=True)


if __name__ == "__main__":
    main()
