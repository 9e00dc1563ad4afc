"""Where one training step's time goes: train.py's own model, optimizers, weight average and
arithmetic, on real batches, each part timed over --steps steps after as many to warm up.

    python results/profile_step.py --data-dir ../shared/data [--stage 2] [--steps 100]

Prints a row a part, in milliseconds a step and as a share of the step: the batch (and its warps
in stage 2), the forward and the backward of each layer (hooks on the modules, the device synced
around each), the loss, each optimizer's step, the weight average; then, from torch.profiler over
the same steps, the casts between dtypes (aten::_to_copy and copy_, inside the layers' times);
last, the forward and the backward summed over the convolutions and over the other layers.
"""

import argparse
import collections
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)  # the repo's scripts, whatever the working folder

import data  # noqa: E402
import train  # noqa: E402
from model import AutoEncoder  # noqa: E402

CAST_OPS = ("aten::_to_copy", "aten::copy_")
CONVOLUTIONS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)


class Clock:
    """Seconds spent in named parts, the device synced before each reading."""

    def __init__(self, device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.spent, self.started = collections.defaultdict(float), {}

    def start(self, name):
        self.sync()
        self.started[name] = time.perf_counter()

    def stop(self, name):
        self.sync()
        self.spent[name] += time.perf_counter() - self.started.pop(name)


def time_layers(model, clock):
    """Hooks that time each leaf module's forward and backward; returns the convolutions' names."""
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        module.register_forward_pre_hook(lambda m, i, n=name: clock.start(f"forward {n}"))
        module.register_forward_hook(lambda m, i, o, n=name: clock.stop(f"forward {n}"))
        module.register_full_backward_pre_hook(lambda m, g, n=name: clock.start(f"backward {n}"))
        module.register_full_backward_hook(lambda m, gi, go, n=name: clock.stop(f"backward {n}"))
    return {name for name, module in model.named_modules() if isinstance(module, CONVOLUTIONS)}


def endless_batches(images, batch_size, generator):
    """Training batches as train.py draws them, epoch after epoch."""
    while True:
        yield from data.batches(images, batch_size, generator)


def step(run, pairs, batch, args, clock, step_number):
    """One training step as train.train_epoch takes it, each part timed."""
    clock.start("batch")
    if args.stage == 2:
        batch = data.augment(batch, run.generator)
    batch.requires_grad_()  # so that the first layer's backward is timed too
    clock.stop("batch")
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        reconstruction = run.model(batch)[0]
    clock.start("loss")
    loss = F.mse_loss(reconstruction.float(), batch.detach())
    clock.stop("loss")
    clock.start("zero_grad")
    for optimizer in run.optimizers:
        optimizer.zero_grad(set_to_none=True)
    clock.stop("zero_grad")
    loss.backward()
    for optimizer in run.optimizers:
        clock.start(f"step {type(optimizer).__name__}")
        optimizer.step()
        clock.stop(f"step {type(optimizer).__name__}")
    clock.start("weight average")
    if run.average is not run.model:
        warmup = (1 + step_number) / (train.AVERAGE_WARMUP + step_number)
        train.update_average(pairs, min(args.ema_decay, warmup))
    clock.stop("weight average")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data.add_arguments(parser)
    parser.add_argument("--stage", type=int, choices=[1, 2], default=1)
    parser.add_argument("--steps", type=int, default=100, help="steps timed (default: 100)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    try:
        device = data.choose_device(args.device)
        images = data.load_split(args.data_dir, True)[0].to(device)
    except data.InputError as error:
        return data.fail(error)
    flags = ["--stage", str(args.stage), "--precision", args.precision]
    if args.stage == 2:
        flags += ["--resume", "none"]
    train_args = train.parse_args(flags)
    torch.manual_seed(0)
    model = AutoEncoder().to(device, memory_format=torch.channels_last)
    run = train.new_run(train_args, model, device)
    pairs = list(zip(run.average.state_dict().values(), model.state_dict().values()))
    clock = Clock(device)
    convolutions = time_layers(run.model, clock)
    run.model.train()
    batches = endless_batches(images, train_args.batch_size, run.generator)
    for number in range(args.steps):  # warm-up
        step(run, pairs, next(batches), train_args, clock, number)
    clock.spent.clear()
    started = time.perf_counter()
    for number in range(args.steps, 2 * args.steps):
        step(run, pairs, next(batches), train_args, clock, number)
    clock.sync()
    whole = (time.perf_counter() - started) / args.steps * 1000
    parts = dict(clock.spent)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for number in range(2 * args.steps, 3 * args.steps):
            step(run, pairs, next(batches), train_args, clock, number)
    events = [event for event in profiler.key_averages() if event.key in CAST_OPS]
    casts_ms = sum(event.self_cpu_time_total for event in events) / 1000 / args.steps
    casts_count = sum(event.count for event in events) / args.steps
    arithmetic = "bf16 autocast" if run.bf16 else "fp32"
    data.say(f"device {device} ({torch.backends.cpu.get_cpu_capability()}), {arithmetic}, stage"
             f" {args.stage}, batch {train_args.batch_size}, {torch.get_num_threads()} threads,"
             f" torch {torch.__version__}; ms a step over {args.steps} steps")
    data.say(f"{'part':32s} {'ms':>7s} {'share':>6s}")
    for name, seconds in parts.items():
        milliseconds = seconds / args.steps * 1000
        data.say(f"{name:32s} {milliseconds:7.2f} {milliseconds / whole:6.1%}")
    data.say(f"{'the whole step':32s} {whole:7.2f}")
    data.say(f"{'casts (in the layers above)':32s} {casts_ms:7.2f} {casts_ms / whole:6.1%}"
             f"  ({casts_count:.0f} a step)")
    for way in ("forward", "backward"):
        for kind, chosen in (("convolutions", True), ("other layers", False)):
            milliseconds = sum(seconds for name, seconds in parts.items() if name.startswith(way)
                               and (name.split()[1] in convolutions) == chosen) / args.steps * 1000
            data.say(f"{f'{way}, {kind}':32s} {milliseconds:7.2f} {milliseconds / whole:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
