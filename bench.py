"""Time this project's training pipeline against a plain PyTorch loop, side by side.

    python bench.py --data-dir ../shared/data

The plain loop is what most MNIST examples do: torchvision's MNIST through a DataLoader
(batch 64, shuffled, per-sample ToTensor; for stage 2 per-sample PIL RandomPerspective
and RandomRotation), the default memory format, fp32, Adam, then the test set in
batches of 64, over the model exactly as model.py defines it (nn's layers, as the
reference). This project's pipeline is train.py's own train_epoch and evaluate with
its defaults (--batch-size times it at another batch size). Both run whole epochs,
evaluation included, on the same model, taking turns (--rounds epochs each, so that a
slow spell of a shared machine hits both); the numbers are training images per second
of wall time in each one's median epoch. Each pipeline runs in a process of its own,
as it would for a user, so that what one sets for its process (train.py's allocator
setting) does not speed up the other.
"""

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

import data
import train
from model import AutoEncoder, with_matrix_product_layers

PLAIN_BATCH_SIZE = 64
# Each row of --levers changes one thing in this project's pipeline.
LEVERS = {
    "without bf16 autocast (fp32)": {"bf16": False},
    "without channels_last": {"channels_last": False},
    "without fused AdamW": {"fused_adam": False},
    "with nn's convolutions for the 1x1 layers": {"matrix_layers": False},
    "without the weight average (EMA)": {"ema": False},
    "with torch.compile": {"compile": True},
    "with glibc's default allocator settings": {"keep_freed_memory": False},
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


def plain_pipeline(args, stage, device, matrix_layers=False):
    """A function that runs one epoch of the plain loop, from its own fresh model."""
    train_loader = plain_loader(args.data_dir, True, args.subset, augment=stage == 2)
    test_loader = plain_loader(args.data_dir, False, args.subset, augment=False)
    model = AutoEncoder().to(device)
    if matrix_layers:
        model = with_matrix_product_layers(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return lambda: plain_epoch(model, optimizer, train_loader, test_loader, device)


def project_pipeline(args, stage, device, channels_last=True, bf16=True, ema=True, fused_adam=True,
                     matrix_layers=True, compile=False, keep_freed_memory=True):
    """A function that runs one epoch of train.py's own pipeline; each lever can be switched off."""
    defaults = train.parse_args([])
    if keep_freed_memory:
        train.keep_freed_memory()
    train_images, test_images = (data.load_split(args.data_dir, train=split)[0][: args.subset].to(device)
                                 for split in (True, False))
    model = train.prepare_model(AutoEncoder().to(device), channels_last, matrix_layers)
    average = train.WeightAverage(model, defaults.ema_decay) if ema else None
    optimizer = train.make_optimizer(model, train.STAGE_LR[stage], fused=fused_adam,
                                     weight_decay=defaults.weight_decay)
    generator = torch.Generator(device=device).manual_seed(0)
    if compile:
        model.compile()

    def epoch():
        train.train_epoch(model, optimizer, train_images, args.batch_size, generator, augment=stage == 2,
                          bf16=bf16 and train.use_bf16(defaults.precision, device), average=average)
        train.evaluate(average.model if average else model, test_images)
    return epoch


# The pipeline that this worker process times; each worker has one.
worker_epoch = None


def start_worker(make_pipeline, arguments, switches):
    global worker_epoch
    torch.manual_seed(0)
    worker_epoch = make_pipeline(*arguments, **switches)


def time_worker_epoch(device):
    started = time.perf_counter()
    worker_epoch()
    synchronize(device)
    return time.perf_counter() - started


def images_per_second(pipelines, num_images, rounds, device):
    """Time each pipeline, given as (make_pipeline, arguments, switches), in a worker process
    of its own: one epoch each in turn, `rounds` times, so that a slow spell of the machine
    hits them alike. Returns each one's median rate over its epochs."""
    spawn = multiprocessing.get_context("spawn")
    workers = [ProcessPoolExecutor(1, spawn, start_worker, pipeline) for pipeline in pipelines]
    try:
        seconds = [[] for _ in workers]
        for _ in range(rounds):
            for times, worker in zip(seconds, workers):
                times.append(worker.submit(time_worker_epoch, device).result())
    finally:
        for worker in workers:
            worker.shutdown()
    return [num_images / statistics.median(times) for times in seconds]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="./data", help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2],
                        help="stages to time (default: 1 2)")
    parser.add_argument("--rounds", type=train.positive(int), default=3,
                        help="epochs of each pipeline, taken in turn; the median counts (default: %(default)s)")
    parser.add_argument("--subset", type=train.positive(int), default=None, help="first N images only")
    parser.add_argument("--batch-size", type=train.positive(int), default=train.parse_args([]).batch_size,
                        help=f"this project's batch size; the plain loop's stays {PLAIN_BATCH_SIZE} "
                             "(default: train.py's, %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto: cuda, then mps, then cpu (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile this project's model")
    parser.add_argument("--levers", action="store_true",
                        help="also time the project's pipeline with one speed lever changed at a time")
    args = parser.parse_args(argv)
    device = train.choose_device(args.device)
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    num_images = len(data.load_split(args.data_dir, train=True)[0][: args.subset])
    for stage in args.stages:
        plain, ours = images_per_second(
            [(plain_pipeline, (args, stage, device), {}),
             (project_pipeline, (args, stage, device), {"compile": args.compile})],
            num_images, args.rounds, device)
        print(f"stage {stage}: plain loop {plain:7.0f} img/s   this project {ours:7.0f} img/s   "
              f"ratio {ours / plain:.2f}x", flush=True)
        if args.levers:
            for name, switches in LEVERS.items():
                [rate] = images_per_second([(project_pipeline, (args, stage, device), switches)],
                                           num_images, args.rounds, device)
                print(f"stage {stage}:   {name:<40} {rate:7.0f} img/s   ratio {rate / plain:.2f}x", flush=True)
            [rate] = images_per_second([(plain_pipeline, (args, stage, device), {"matrix_layers": True})],
                                       num_images, args.rounds, device)
            print(f"stage {stage}: plain loop with the matrix-product layers {rate:7.0f} img/s   "
                  f"this project's ratio to it {ours / rate:.2f}x", flush=True)


if __name__ == "__main__":
    main()
