"""Train the MNIST autoencoder.

Stage 1 trains from scratch on plain digits; stage 2 fine-tunes a stage-1 model on
warped digits (random perspective + rotation):

    python train.py --stage 1 --epochs 80
    python train.py --stage 2 --resume best.pt
    python train.py --eval-only --resume best.pt

Each epoch appends a row to <out-dir>/history.csv and writes <out-dir>/last.pt, and
<out-dir>/best.pt when the test loss improves. `--resume last.pt` with the same flags
continues an interrupted run exactly where its last completed epoch left it. A stage
ends early once ReduceLROnPlateau has brought the lr below --min-lr.
"""

import argparse
import copy
import dataclasses
import math
import os
import shlex
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import evaluate
import fast
from checkpoints import (CannotWrite, FolderInUse, Stopped, earlier_history, keep_starting_checkpoint, lock_out_dir,
                         raise_stopped, record_pid, refuse_overwrite, save_checkpoint, stop_signals_deferred,
                         stop_signals_handled_by, write_history)
from model import AutoEncoder, CheckpointError, load_checkpoint
from muon import MuonAdamW

# The lr in each stage; under Muon the parameters on AdamW take ADAMW_LR_RATIO of it. Muon's
# settings come from results/experiments/muon/ (stage 1: muon_sweep.py; stage 2: 1e-3 beat 4e-3).
STAGE_LR = {"muon": {1: 0.02, 2: 1e-3}, "adamw": {1: 5e-3, 2: 1e-3}}
ADAMW_LR_RATIO = 1.0  # 0.1, 0.25, 0.5 and 2 did worse
MUON_MOMENTUM = 0.95  # 0.9 did worse
# The first and last convolutions (1 -> 16 and 16 -> 1 channels) do better on AdamW; the two
# matrix-product layers did far worse there.
ADAMW_LAYERS = ("encoder.0.0", "decoder.4.1")
WEIGHT_DECAY = 1e-2  # of the convolution kernels: a faster start (results/experiments/)
MIN_LR = 1e-5  # the AMX run gained nothing in stage 2 once its lr was below this (results/experiments/)
# Reading a loss back to the host makes the CPU wait for a GPU; the losses are checked every few batches.
LOSS_CHECK_EVERY = 50
EXIT_NON_FINITE, EXIT_CANNOT_WRITE = 3, 4  # and data.EXIT_USAGE, 2, for bad flags or files
# Flags whose change makes a continued run differ from an uninterrupted one.
TRAINING_FLAGS = ["optimizer", "batch_size", "lr", "weight_decay", "ema_decay", "precision", "dataset",
                  "plain_resize", "subset", "plateau_factor", "plateau_patience", "plateau_threshold"]
# What a checkpoint of this project holds beyond the reference's five keys, so that
# --resume continues a run exactly.
RESUME_KEYS = ["train_model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
               "generator_state", "best_loss", "epoch"]


class UsageError(Exception):
    """A mistake in the command line or its files; the message says what to do."""


class NonFiniteLoss(Exception):
    """The loss became inf or NaN; the message names the batch, e.g. 'training batch 12'."""


def bounded(kind, low, strict=True):
    """An argparse type: a `kind` number above `low` (at least `low` if not strict)."""
    def parse(text):
        value = kind(text)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", type=int, choices=[1, 2], default=1,
        help="1: train on plain digits; 2: fine-tune with augmentation, needs --resume (default: %(default)s)")
    add("--epochs", type=bounded(int, 0), default=80, help="epochs of this stage at most (default: %(default)s)")
    add("--optimizer", choices=["muon", "adamw"], default="muon",
        help="muon: Muon for the convolution kernels, AdamW for the rest; adamw: AdamW for all (default: %(default)s)")
    add("--lr", type=bounded(float, 0), default=None,
        help="learning rate (default: muon 0.02 in stage 1, 0.001 in stage 2; adamw 0.005, 0.001)")
    add("--min-lr", type=bounded(float, 0, strict=False), default=MIN_LR,
        help="end the stage once the lr falls below this; 0 runs every epoch (default: %(default)s)")
    add("--batch-size", type=bounded(int, 0), default=64, help="(default: %(default)s)")
    add("--plateau-factor", type=bounded(float, 0), default=0.5,
        help="ReduceLROnPlateau: multiply the lr by this when the test loss stalls (default: %(default)s)")
    add("--plateau-patience", type=bounded(int, 0, strict=False), default=1,
        help="ReduceLROnPlateau: epochs without improvement before the lr drops (default: %(default)s)")
    add("--plateau-threshold", type=bounded(float, 0, strict=False), default=1e-3,
        help="ReduceLROnPlateau: relative gain below which an epoch counts as no improvement (default: %(default)s)")
    add("--weight-decay", type=bounded(float, 0, strict=False), default=WEIGHT_DECAY,
        help="decay of the convolution kernels; with --optimizer adamw 0 is plain Adam (default: %(default)s)")
    add("--ema-decay", type=float, default=0.999,
        help="decay of the moving average of the weights that is evaluated and saved; 0 turns it off "
             "(default: %(default)s)")
    add("--resume", metavar="PATH", default=None, help="checkpoint to continue (same stage) or to start stage 2 from")
    data.add_arguments(parser)
    add("--out-dir", default=".", help="where checkpoints and history.csv go (default: %(default)s)")
    add("--overwrite", action="store_true", help="start a new run in an --out-dir that holds another one")
    add("--seed", type=int, default=1, help="seeds the weights, shuffling and augmentation (default: %(default)s)")
    add("--eval-only", action="store_true", help="print the test metrics of --resume and exit")
    add("--subset", type=bounded(int, 0), default=None, help="use only the first N training and test images")
    add("--precision", choices=["auto", "bf16", "fp32"], default="auto",
        help="training arithmetic; auto: bf16 where the device computes it natively, else fp32. "
             "Evaluation is always fp32 (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = STAGE_LR[args.optimizer][args.stage]
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.lr < args.min_lr:
        parser.error(f"--lr {args.lr:g} is below --min-lr {args.min_lr:g}, so the stage would end before its "
                     f"first epoch: raise --lr or lower --min-lr")
    if args.plateau_factor >= 1:
        parser.error(f"--plateau-factor must be < 1, got {args.plateau_factor}")
    if args.stage == 2 and not args.resume:
        parser.error("--stage 2 fine-tunes a trained model: pass --resume best.pt from stage 1")
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume CHECKPOINT")
    return args


def make_optimizer(model, args):
    """Muon for the convolution kernels and AdamW for the rest, or AdamW for all. Weight
    decay shrinks the kernels only, as is usual (not biases and BatchNorm scales); AdamW
    with `--weight-decay 0` is plain Adam."""
    if args.optimizer == "adamw" and not args.weight_decay:
        return torch.optim.Adam(model.parameters(), lr=args.lr, fused=fast.FUSED_OPTIMIZER)
    if args.optimizer == "adamw":
        groups = [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": args.weight_decay},
                  {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=args.lr, fused=fast.FUSED_OPTIMIZER)
    return MuonAdamW.for_convolutions(model, args.lr, args.lr * ADAMW_LR_RATIO, MUON_MOMENTUM, args.weight_decay,
                                      adamw_layers=ADAMW_LAYERS)


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    `self.model` is the averaged copy that is evaluated and saved. With `warmup` (for
    training from random weights) its decay grows from 0.1 towards `decay` over the
    first steps, so that the average does not drag the random initial weights along for
    thousands of steps; a model that starts from trained weights has nothing to forget.
    (torch.optim.swa_utils.AveragedModel copies the model at its first update instead.)
    """

    def __init__(self, model, decay, warmup=True):
        self.model, self.decay, self.warmup = copy.deepcopy(model), decay, warmup
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self.averaged = [(mine, theirs) for mine, theirs in pairs if mine.is_floating_point()]
        self.copied = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self, step):
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        for mine, theirs in self.averaged:
            mine.lerp_(theirs, 1 - decay)
        for mine, theirs in self.copied:
            mine.copy_(theirs)


@dataclasses.dataclass
class Run:
    """What training changes, and what a checkpoint holds so that --resume continues it exactly."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    generator: torch.Generator
    average: WeightAverage | None
    bf16: bool
    precision_reason: str
    best_loss: float = math.inf

    @property
    def evaluated(self):
        """The model that is evaluated and saved: the weight average, where there is one."""
        return self.average.model if self.average is not None else self.model


def new_run(args, model, device):
    optimizer = make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=args.plateau_factor, patience=args.plateau_patience,
        threshold=args.plateau_threshold,
    )
    # On the CPU whatever the device: a seed gives the same batches and warps everywhere, and a
    # checkpoint's generator state resumes on any device.
    generator = torch.Generator().manual_seed(args.seed)
    average = WeightAverage(model, args.ema_decay, warmup=args.stage == 1) if args.ema_decay > 0 else None
    return Run(model, optimizer, scheduler, generator, average, *fast.training_precision(args.precision, device))


def start(run, args, checkpoint):
    """Load what --resume holds into `run`: all of it to continue the same stage, the weights
    alone to start stage 2 from stage 1. Returns the first epoch to train."""
    if checkpoint is None:
        return 1
    if checkpoint.get("stage") != args.stage or not all(key in checkpoint for key in RESUME_KEYS):
        print(f"stage {args.stage}: starting from the weights of {args.resume}, fresh optimizer, lr {args.lr:g}")
        keep_starting_checkpoint(args, checkpoint)
        return 1
    trained_with = checkpoint.get("args", {}).get("optimizer", "adamw")  # the only one before Muon
    if trained_with != args.optimizer:
        raise UsageError(f"{args.resume} was trained with --optimizer {trained_with}; continue it with "
                         f"--optimizer {trained_with}")
    run.model.load_state_dict(checkpoint["train_model_state_dict"])
    try:
        run.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    except ValueError:  # Adam has one parameter group, AdamW with its decay two
        trained_with = checkpoint.get("args", {}).get("weight_decay", 0.0)
        raise UsageError(f"{args.resume} was trained with --weight-decay {trained_with}; "
                         f"continue it with the flags it was trained with") from None
    run.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
    try:
        run.generator.set_state(checkpoint["generator_state"].cpu())
    except (RuntimeError, TypeError, AttributeError):
        raise UsageError(f"{args.resume}: its random-number state is not a CPU generator's (a GPU run of an older "
                         f"version wrote it), so it cannot be continued; --stage 2 starts from its weights") from None
    run.best_loss = checkpoint["best_loss"]
    apply_changed_flags(args, checkpoint, run.optimizer, run.scheduler)
    print(f"continuing stage {args.stage} from epoch {checkpoint['epoch']} of {args.resume}")
    return checkpoint["epoch"] + 1


def apply_changed_flags(args, checkpoint, optimizer, scheduler):
    """Continuing a run with other training flags goes on with them (the saved optimizer and
    scheduler state would keep the old lr, decay and plateau settings), but says that this
    is not the run an uninterrupted one would give."""
    before = checkpoint.get("args", {})
    changed = [name for name in TRAINING_FLAGS if name in before and before[name] != getattr(args, name)]
    if not changed:
        return
    listed = ", ".join(f"--{name.replace('_', '-')} (was {before[name]})" for name in changed)
    print(f"warning: continuing {args.resume} with changed {listed}; this is not the run an uninterrupted "
          f"one would give", file=sys.stderr)
    if "lr" in changed:  # every group's lr in the same proportion
        scale = args.lr / before["lr"]
        for group in optimizer.param_groups:
            group["lr"] *= scale
    if "weight_decay" in changed:
        for group in optimizer.param_groups:
            if any(p.dim() > 1 for p in group["params"]):
                group["weight_decay"] = args.weight_decay
    for name in ("factor", "patience", "threshold"):
        setattr(scheduler, name, getattr(args, f"plateau_{name}"))


def check_finite(values, first_number, what):
    """Raise NonFiniteLoss naming the first inf or NaN of `values`, numbered from `first_number`."""
    bad = ~torch.isfinite(values)
    if bad.any():
        raise NonFiniteLoss(f"{what} {first_number + int(bad.nonzero()[0])}")


def train_epoch(run, images, args, epoch):
    """One pass over `images` in a shuffled order; returns the mean training loss."""
    run.model.train()
    num_batches = math.ceil(len(images) / args.batch_size)
    batch_losses = torch.zeros(num_batches, device=images.device)
    # A bar only on a terminal: a log file gets just the line per epoch that the loop prints.
    shown = sys.stderr.isatty()
    progress = tqdm(data.shuffled_batches(images, args.batch_size, run.generator), total=num_batches,
                    desc=f"stage {args.stage} epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True,
                    mininterval=0.5, disable=not shown)
    checked = 0
    for index, batch in enumerate(progress):
        if args.stage == 2:
            batch = data.augment(batch, run.generator)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=run.bf16):
            reconstruction, _ = run.model(batch)
        loss = F.mse_loss(reconstruction.float(), batch)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if run.average is not None:
            run.average.update((epoch - 1) * num_batches + index)
        batch_losses[index] = loss.detach()
        if (index + 1) % LOSS_CHECK_EVERY == 0 or index + 1 == num_batches:
            check_finite(batch_losses[checked : index + 1], checked + 1, "training batch")
            checked = index + 1
            if shown:
                progress.set_postfix(loss=f"{batch_losses[:checked].mean().item():.5f}", refresh=False)
    return batch_losses.mean().item()


def mean_test_mse(model, images):
    """Test MSE, the mean over every pixel of every image."""
    errors = evaluate.per_image_mse(model, images)
    check_finite(errors, 1, "test image")
    return errors.mean().item()


def save_epoch(args, run, epoch, test_loss, improved, history):
    """Write history.csv, best.pt when the test loss improved, and last.pt.

    This order keeps the files consistent after a kill at any point: a resume from
    last.pt drops later history rows and redoes the epoch identically.
    """
    checkpoint = {"epoch": epoch, "model_state_dict": run.evaluated.state_dict(),
                  "optimizer_state_dict": run.optimizer.state_dict(),
                  "scheduler_state_dict": run.scheduler.state_dict(), "loss": test_loss,
                  "stage": args.stage, "args": vars(args), "train_model_state_dict": run.model.state_dict(),
                  "generator_state": run.generator.get_state(), "best_loss": run.best_loss}
    write_history(os.path.join(args.out_dir, "history.csv"), history)
    if improved:
        save_checkpoint(os.path.join(args.out_dir, "best.pt"), checkpoint)
    save_checkpoint(os.path.join(args.out_dir, "last.pt"), checkpoint)


def resume_command(argv, out_dir):
    """The command line `argv` with its --resume replaced by <out-dir>/last.pt."""
    kept = [word for before, word in zip([None, *argv], argv)
            if "--resume" not in (word, before) and not word.startswith("--resume=")]
    return shlex.join(["python", "train.py", *kept, "--resume", os.path.join(out_dir, "last.pt")])


def run_training(args, argv, run, start_epoch, train_images, test_images):
    """The epochs of one stage; returns the exit status."""
    history = earlier_history(args.resume, args.stage, start_epoch)
    print(f"training arithmetic: {'bf16 autocast' if run.bf16 else 'fp32'} ({run.precision_reason})")
    epoch, saved_epoch = start_epoch - 1, None
    try:
        with stop_signals_handled_by(raise_stopped):
            for epoch in range(start_epoch, args.epochs + 1):
                lr = run.optimizer.param_groups[0]["lr"]
                if lr < args.min_lr:
                    print(f"stage {args.stage} stopped after epoch {epoch - 1}: the lr ({lr:.2e}) fell below "
                          f"--min-lr {args.min_lr:g}, so learning has stopped; --min-lr 0 runs every epoch")
                    break
                started = time.perf_counter()
                train_loss = train_epoch(run, train_images, args, epoch)
                test_loss = mean_test_mse(run.evaluated, test_images)
                run.scheduler.step(test_loss)
                seconds = time.perf_counter() - started
                improved, run.best_loss = test_loss < run.best_loss, min(run.best_loss, test_loss)
                history.append({"stage": args.stage, "epoch": epoch, "train_loss": f"{train_loss:.7f}",
                                "test_loss": f"{test_loss:.7f}", "lr": f"{lr:.3e}", "seconds": f"{seconds:.2f}"})
                with stop_signals_deferred():  # Ctrl-C and SIGTERM wait until the epoch's files are written
                    save_epoch(args, run, epoch, test_loss, improved, history)
                    saved_epoch = epoch
                print(f"stage {args.stage} epoch {epoch:3d}/{args.epochs}  train {train_loss:.7f}  test "
                      f"{test_loss:.7f}{' *' if improved else '  '}  lr {lr:.2e}  {seconds:5.1f}s", flush=True)
    except NonFiniteLoss as error:
        return data.fail(f"the loss became non-finite at epoch {epoch}, {error} (lr "
                         f"{run.optimizer.param_groups[0]['lr']:g}); try a lower --lr. Checkpoints were left as "
                         f"they were.", EXIT_NON_FINITE)
    except (Stopped, CannotWrite) as error:
        way_on = (f"{os.path.join(args.out_dir, 'last.pt')} holds epoch {saved_epoch}, resume with: "
                  f"{resume_command(argv, args.out_dir)}" if saved_epoch is not None
                  else "no epoch was saved; run the same command again")
        if isinstance(error, CannotWrite):
            return data.fail(f"{error}; {way_on}", EXIT_CANNOT_WRITE)
        print(f"\nstopped by {error}; {way_on}", file=sys.stderr)
        return 128 + error.signal_number
    print(f"best test loss of stage {args.stage}: {run.best_loss:.7f}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.eval_only:
        return evaluate.report(args.resume, args, args.subset)
    fast.keep_freed_memory()
    try:
        device = data.choose_device(args.device)
        print(f"device: {device}")
        print("config: " + " ".join(f"{key}={value}" for key, value in vars(args).items()))
        lock = lock_out_dir(args.out_dir)
        torch.manual_seed(args.seed)
        model, checkpoint = AutoEncoder().to(device), None
        if args.resume:
            model, checkpoint = load_checkpoint(args.resume, device)
        (train_images, _), (test_images, _) = data.load_splits(args.data_dir, args.dataset, device, args.subset,
                                                               args.plain_resize)
        if len(train_images) < args.batch_size:
            raise UsageError(f"{len(train_images)} training images, fewer than one batch "
                             f"(--batch-size {args.batch_size}): add images or pass a smaller --batch-size")
        refuse_overwrite(args)
        run = new_run(args, fast.prepare_model(model), device)
        start_epoch = start(run, args, checkpoint)
    except (UsageError, FolderInUse, CheckpointError, data.DataError) as error:
        return data.fail(error)
    except CannotWrite as error:
        return data.fail(error, EXIT_CANNOT_WRITE)
    record_pid(lock)
    return run_training(args, argv, run, start_epoch, train_images, test_images)


if __name__ == "__main__":
    sys.exit(main())
