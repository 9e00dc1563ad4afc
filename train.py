"""Train the MNIST autoencoder.

Stage 1 trains from scratch on plain digits; stage 2 fine-tunes a stage-1 model on
warped digits (random perspective + rotation):

    python train.py --stage 1 --epochs 80
    python train.py --stage 2 --resume best.pt
    python train.py --eval-only --resume best.pt

Each epoch appends a row to <out-dir>/history.csv and writes <out-dir>/last.pt, and
<out-dir>/best.pt when the test loss improves. `--resume last.pt` with the same flags
continues an interrupted run exactly where its last completed epoch left it.
"""

import argparse
import contextlib
import copy
import csv
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import fast
import evaluate
from model import AutoEncoder, CheckpointError, load_checkpoint

STAGE_LR = {1: 5e-3, 2: 1e-3}
WEIGHT_DECAY = 1e-2  # AdamW's, on the convolution kernels: a faster start (results/experiments/)
HISTORY_FIELDS = ["stage", "epoch", "train_loss", "test_loss", "lr", "seconds"]
# On GPU, reading a loss back to the host stalls the pipeline; do it every few batches.
GPU_SYNC_EVERY = 50
EXIT_USAGE, EXIT_NON_FINITE, EXIT_INTERRUPTED = 2, 3, 130


# What a checkpoint of this project holds beyond the reference's five keys, so that
# --resume continues a run exactly.
RESUME_KEYS = ["train_model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
               "generator_state", "best_loss", "epoch"]


class UsageError(Exception):
    """A mistake in the command line or its files; the message says what to do."""


class NonFiniteLoss(Exception):
    """The loss became inf or NaN; `where` names the batch, e.g. 'training batch 12'."""


def positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, choices=[1, 2], default=1,
                        help="1: train on plain digits; 2: fine-tune with augmentation, needs --resume "
                             "(default: %(default)s)")
    parser.add_argument("--epochs", type=positive(int), default=80, help="epochs of this stage (default: %(default)s)")
    parser.add_argument("--lr", type=positive(float), default=None,
                        help=f"AdamW learning rate (default: {STAGE_LR[1]:g} for stage 1, {STAGE_LR[2]:g} for stage 2)")
    parser.add_argument("--batch-size", type=positive(int), default=64, help="(default: %(default)s)")
    parser.add_argument("--plateau-factor", type=positive(float), default=0.5,
                        help="ReduceLROnPlateau: multiply the lr by this when the test loss stalls "
                             "(default: %(default)s)")
    parser.add_argument("--plateau-patience", type=int, default=1,
                        help="ReduceLROnPlateau: epochs without improvement before the lr drops "
                             "(default: %(default)s)")
    parser.add_argument("--plateau-threshold", type=float, default=1e-4,
                        help="ReduceLROnPlateau: relative gain below which an epoch counts as no improvement "
                             "(default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY,
                        help="AdamW decay of the convolution kernels; 0 is plain Adam (default: %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="decay of the moving average of the weights that is evaluated and saved; "
                             "0 turns it off (default: %(default)s)")
    parser.add_argument("--resume", metavar="PATH", default=None,
                        help="checkpoint to continue (same stage) or to start stage 2 from")
    parser.add_argument("--data-dir", default="./data",
                        help="folder holding MNIST/raw/, downloaded there if missing (default: %(default)s)")
    parser.add_argument("--dataset", choices=sorted(data.DATASETS), default="mnist", help="(default: %(default)s)")
    parser.add_argument("--out-dir", default=".", help="where checkpoints and history.csv go (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the weights, shuffling and augmentation "
                                                            "(default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto: cuda, then mps, then cpu (default: %(default)s)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --resume on the test set and exit")
    parser.add_argument("--subset", type=positive(int), default=None,
                        help="use only the first N training and test images (quick runs, tests)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="training arithmetic; auto: bf16 where the device computes it natively, "
                             "else fp32. Evaluation is always fp32 (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = STAGE_LR[args.stage]
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.plateau_factor >= 1:
        parser.error(f"--plateau-factor must be < 1, got {args.plateau_factor}")
    if args.stage == 2 and not args.resume:
        parser.error("--stage 2 fine-tunes a trained model: pass --resume best.pt from stage 1")
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume CHECKPOINT")
    return args


def make_optimizer(model, lr, weight_decay=0.0):
    """AdamW whose decay shrinks the convolution kernels only, as is usual (not biases
    and BatchNorm scales); with `weight_decay=0` this is plain Adam."""
    if not weight_decay:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=fast.FUSED_OPTIMIZER)
    kernels = [p for p in model.parameters() if p.dim() > 1]
    others = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": kernels, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=fast.FUSED_OPTIMIZER)


def check_writable(folder):
    """Fail before training, not after the first epoch, when checkpoints cannot be written."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UsageError(f"--out-dir {folder}: cannot write there ({error.strerror or error})") from None


def atomic_write(path, write):
    """Call write(temp_path), then move the temp file over `path` in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    os.close(descriptor)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_checkpoint(path, checkpoint):
    atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))


def read_history(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as file:
        return [dict(row) for row in csv.DictReader(file)]


def earlier_history(resume, stage, start_epoch):
    """The rows of the run in --resume's folder that come before this run's first epoch.

    They carry stage 1 into stage 2's history, and drop any row written after the
    last checkpoint of an interrupted run.
    """
    if not resume:
        return []
    rows = read_history(os.path.join(os.path.dirname(resume), "history.csv"))
    return [row for row in rows if (int(row["stage"]), int(row["epoch"])) < (stage, start_epoch)]


def write_history(path, rows):
    def write(temporary):
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    `self.model` is the averaged copy that is evaluated and saved. With `warmup` (for
    training from random weights) its decay grows from 0.1 towards `decay` over the
    first steps, so that the average does not drag the random initial weights along for
    thousands of steps; a model that starts from trained weights has nothing to forget.
    """

    def __init__(self, model, decay, warmup=True):
        self.model, self.decay, self.warmup = copy.deepcopy(model), decay, warmup
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self.averaged = [(mine, theirs) for mine, theirs in pairs if mine.is_floating_point()]
        self.copied = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self, step):
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        # torch.optim.swa_utils.AveragedModel would copy the model at its first update
        # rather than warm up from it, so the average is kept here.
        for mine, theirs in self.averaged:
            mine.lerp_(theirs, 1 - decay)
        for mine, theirs in self.copied:
            mine.copy_(theirs)


def train_epoch(model, optimizer, images, batch_size, generator, augment=False, bf16=False,
                average=None, first_step=0, description="train"):
    """One pass over `images` in a shuffled order; returns the mean training loss."""
    model.train()
    sync_every = 1 if images.device.type == "cpu" else GPU_SYNC_EVERY
    num_batches = math.ceil(len(images) / batch_size)
    batch_losses = torch.zeros(num_batches, device=images.device)
    # A bar only on a terminal: a log file gets the one line per epoch that main prints.
    progress = tqdm(data.shuffled_batches(images, batch_size, generator), total=num_batches,
                    desc=description, leave=False, dynamic_ncols=True, mininterval=0.5,
                    disable=not sys.stderr.isatty())
    checked = 0
    for index, batch in enumerate(progress):
        if augment:
            batch = data.augment(batch, generator)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            reconstruction, _ = model(batch)
        loss = F.mse_loss(reconstruction.float(), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(first_step + index)
        batch_losses[index] = loss.detach()
        if (index + 1) % sync_every == 0 or index + 1 == num_batches:
            recent = batch_losses[checked : index + 1]
            if not torch.isfinite(recent).all():
                first_bad = checked + int((~torch.isfinite(recent)).nonzero()[0]) + 1
                raise NonFiniteLoss(f"training batch {first_bad}")
            checked = index + 1
            progress.set_postfix(loss=f"{batch_losses[:checked].mean().item():.5f}", refresh=False)
    return batch_losses.mean().item()


def mean_test_mse(model, images):
    """Test MSE, the mean over every pixel of every image."""
    errors = evaluate.per_image_mse(model, images)
    if not torch.isfinite(errors).all():
        raise NonFiniteLoss(f"test image {int((~torch.isfinite(errors)).nonzero()[0]) + 1}")
    return errors.mean().item()


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C until the block is done, so an epoch's files are written whole."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def resume_command(out_dir):
    """The command line that continues this run from <out-dir>/last.pt."""
    argv, skip = [], False
    for word in sys.argv[1:]:
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif not word.startswith("--resume="):
            argv.append(word)
    return shlex.join(["python", "train.py", *argv, "--resume", os.path.join(out_dir, "last.pt")])


def print_run_header(args, device):
    print(f"device: {device}")
    print("config: " + " ".join(f"{key}={value}" for key, value in vars(args).items()))


def keep_starting_checkpoint(args, checkpoint):
    """This stage will write best.pt and last.pt anew: keep the previous stage's file under its own name."""
    resume, out_dir = os.path.abspath(args.resume), os.path.abspath(args.out_dir)
    if os.path.dirname(resume) != out_dir or os.path.basename(resume) not in ("best.pt", "last.pt"):
        return
    kept = os.path.join(args.out_dir, f"stage{checkpoint.get('stage', 1)}_{os.path.basename(resume)}")
    atomic_write(kept, lambda temporary: shutil.copyfile(resume, temporary))
    print(f"kept {args.resume} as {kept}")


def run_training(args, device, model, checkpoint, train_images, test_images):
    continuing = (checkpoint is not None and checkpoint.get("stage") == args.stage
                  and all(key in checkpoint for key in RESUME_KEYS))
    optimizer = make_optimizer(model, args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=args.plateau_factor, patience=args.plateau_patience,
        threshold=args.plateau_threshold,
    )
    generator = torch.Generator(device=device).manual_seed(args.seed)
    average = WeightAverage(model, args.ema_decay, warmup=args.stage == 1) if args.ema_decay > 0 else None
    if args.compile:
        model.compile()
    start_epoch, best_loss = 1, math.inf
    if continuing:
        model.load_state_dict(checkpoint["train_model_state_dict"])
        try:
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        except ValueError:  # Adam has one parameter group, AdamW with its decay two
            trained_with = checkpoint.get("args", {}).get("weight_decay", 0.0)
            print(f"error: {args.resume} was trained with --weight-decay {trained_with}; "
                  f"continue it with the flags it was trained with", file=sys.stderr)
            return EXIT_USAGE
        scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        generator.set_state(checkpoint["generator_state"].cpu())
        start_epoch, best_loss = checkpoint["epoch"] + 1, checkpoint["best_loss"]
        print(f"continuing stage {args.stage} from epoch {checkpoint['epoch']} of {args.resume}")
    elif checkpoint is not None:
        print(f"stage {args.stage}: starting from the weights of {args.resume}, fresh optimizer, lr {args.lr:g}")
        keep_starting_checkpoint(args, checkpoint)
    history = earlier_history(args.resume, args.stage, start_epoch)
    history_path = os.path.join(args.out_dir, "history.csv")
    evaluated = average.model if average is not None else model

    bf16 = fast.use_bf16(args.precision, device)
    batches_per_epoch = math.ceil(len(train_images) / args.batch_size)
    print(f"training arithmetic: {'bf16 autocast' if bf16 else 'fp32'}")

    epoch, saved_epoch = start_epoch - 1, None
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            started = time.perf_counter()
            train_loss = train_epoch(
                model, optimizer, train_images, args.batch_size, generator,
                augment=args.stage == 2, bf16=bf16, average=average,
                first_step=(epoch - 1) * batches_per_epoch,
                description=f"stage {args.stage} epoch {epoch}/{args.epochs}",
            )
            test_loss = mean_test_mse(evaluated, test_images)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step(test_loss)
            seconds = time.perf_counter() - started
            history.append({"stage": args.stage, "epoch": epoch, "train_loss": f"{train_loss:.7f}",
                            "test_loss": f"{test_loss:.7f}", "lr": f"{lr:.3e}", "seconds": f"{seconds:.2f}"})
            improved = test_loss < best_loss
            best_loss = min(best_loss, test_loss)
            checkpoint = {
                "epoch": epoch,
                "model_state_dict": evaluated.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(),
                "loss": test_loss,
                "stage": args.stage,
                "args": vars(args),
                "train_model_state_dict": model.state_dict(),
                "generator_state": generator.get_state(),
                "best_loss": best_loss,
            }
            # This order keeps the files consistent after a kill at any point: a resume
            # from last.pt drops later history rows and redoes the epoch identically.
            with interrupts_deferred():
                write_history(history_path, history)
                if improved:
                    save_checkpoint(os.path.join(args.out_dir, "best.pt"), checkpoint)
                save_checkpoint(os.path.join(args.out_dir, "last.pt"), checkpoint)
                saved_epoch = epoch
            print(f"stage {args.stage} epoch {epoch:3d}/{args.epochs}  train {train_loss:.7f}  "
                  f"test {test_loss:.7f}{' *' if improved else '  '}  lr {lr:.2e}  {seconds:5.1f}s", flush=True)
    except NonFiniteLoss as error:
        print(f"error: the loss became non-finite at epoch {epoch}, {error} "
              f"(lr {optimizer.param_groups[0]['lr']:g}); try a lower --lr. "
              f"Checkpoints were left as they were.", file=sys.stderr)
        return EXIT_NON_FINITE
    except KeyboardInterrupt:
        if saved_epoch is None:
            print("\ninterrupted before an epoch was completed; run the same command again.", file=sys.stderr)
        else:
            print(f"\ninterrupted; {os.path.join(args.out_dir, 'last.pt')} holds epoch {saved_epoch}.",
                  file=sys.stderr)
            print(f"resume with: {resume_command(args.out_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"best test loss of stage {args.stage}: {best_loss:.7f}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.eval_only:
        return evaluate.report(args.resume, args.data_dir, args.dataset, args.device, args.subset)
    fast.keep_freed_memory()
    try:
        device = data.choose_device(args.device)
        print_run_header(args, device)
        check_writable(args.out_dir)
        torch.manual_seed(args.seed)
        model, checkpoint = AutoEncoder().to(device), None
        if args.resume:
            model, checkpoint = load_checkpoint(args.resume, device)
        model = fast.prepare_model(model)
        train_split, test_split = data.load_splits(args.data_dir, args.dataset, device, args.subset)
    except (UsageError, CheckpointError, data.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run_training(args, device, model, checkpoint, train_split[0], test_split[0])


if __name__ == "__main__":
    sys.exit(main())
