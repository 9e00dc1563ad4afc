"""Train the MNIST autoencoder: stage 1 from scratch on plain digits, stage 2 fine-tunes a stage-1
model on warped digits (random perspective and rotation).

    python train.py --stage 1 --epochs 80
    python train.py --stage 2 --resume best.pt
    python train.py --resume last.pt              # continue an interrupted run exactly

Each epoch appends a row to <out-dir>/history.csv and writes last.pt, and best.pt when the test MSE
improved. A stage ends early once ReduceLROnPlateau has brought the lr below --min-lr.
"""

import argparse
import contextlib
import copy
import io
import math
import os
import shlex
import signal
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from data import InputError, say
from model import AutoEncoder, CheckpointError, load_checkpoint
from muon import Muon

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no guard against two runs in one folder
    fcntl = None

STAGE_LR = {1: 0.02, 2: 1e-3}  # these settings were chosen by the runs in results/experiments
MUON_MOMENTUM = 0.95
PLATEAU = {"factor": 0.5, "patience": 1, "threshold": 1e-3}  # ReduceLROnPlateau on the test MSE
ADAMW_LAYERS = ("encoder.0.0", "decoder.4.1")  # the 1->16 and 16->1 convolutions learn better on AdamW
EVAL_BATCH_SIZE = 200
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_NON_FINITE, EXIT_CANNOT_WRITE = 3, 4  # and data.EXIT_USAGE, 2, for bad flags or files
RUN_FILES = ["best.pt", "last.pt", "history.csv"]
LIMITS = [("epochs", 1, math.inf), ("lr", 1e-12, math.inf), ("min_lr", 0, math.inf), ("batch_size", 1, math.inf),
          ("weight_decay", 0, math.inf), ("ema_decay", 0, 1), ("seed", 0, 2**64), ("subset", 1, math.inf)]
HISTORY_FIELDS = ["stage", "epoch", "train_loss", "test_loss", "lr", "seconds"]
# Flags whose change makes a continued run differ from an uninterrupted one.
TRAINING_FLAGS = ["batch_size", "lr", "weight_decay", "ema_decay", "precision", "dataset", "plain_resize", "subset"]


class NonFiniteLoss(Exception):
    """The loss became inf or NaN; the message names the batch."""


class CannotWrite(Exception):
    """A run file could not be written; the message names it and the reason."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived; the run stopped between batches."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", type=int, choices=[1, 2], default=1, help="2: fine-tune on warped digits, needs --resume")
    add("--epochs", type=int, default=80, help="epochs of this stage at most (default: 80)")
    add("--lr", type=float, help="learning rate of every parameter (default: 0.02, stage 2: 0.001)")
    add("--min-lr", type=float, default=1e-5, help="end the stage once the lr falls below this; 0 runs every epoch "
        "(default: 1e-5)")
    add("--batch-size", type=int, default=64, help="(default: 64)")
    add("--weight-decay", type=float, default=0.01, help="of the kernels (default: 0.01)")
    add("--ema-decay", type=float, default=0.999, help="moving average of the weights, evaluated and saved; 0 turns "
        "it off (default: 0.999)")
    add("--resume", metavar="PATH", help="checkpoint to continue (same stage) or to start stage 2 from")
    data.add_arguments(parser)
    add("--out-dir", default=".", help="where checkpoints and history.csv go (default: .)")
    add("--overwrite", action="store_true", help="start a new run in an --out-dir that holds another one")
    add("--seed", type=int, default=1, help="weights, shuffling and warps (default: 1)")
    add("--subset", type=int, help="use only the first N training and test images")
    add("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="training arithmetic; auto: bf16 "
        "where the device computes it natively, else fp32; evaluation is fp32")
    args = parser.parse_args(argv)
    args.lr = STAGE_LR[args.stage] if args.lr is None else args.lr
    for name, low, high in LIMITS:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and low <= value < high):
            parser.error(f"argument --{name.replace('_', '-')}: must be in [{low:g}, {high:g}), got {value}")
    if args.lr < args.min_lr:
        parser.error(f"--lr {args.lr:g} is below --min-lr {args.min_lr:g}: raise --lr or lower --min-lr")
    if args.stage == 2 and not args.resume:
        parser.error("--stage 2 fine-tunes a trained model: pass --resume best.pt from stage 1")
    return args


def lock_out_dir(folder):
    """An OS lock on <folder>/.lock for this process's life: a second run into the folder stops at once."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, ".lock"), "a+")
        if fcntl:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise InputError(f"--out-dir {folder} is in use by another train.py run (pid {lock.read().strip()}); wait "
                         f"for it or pick another --out-dir") from None
    except OSError as error:
        raise InputError(f"--out-dir {folder}: cannot write there ({error.strerror or error})") from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def atomic_write(path, content):
    """Write bytes to a temp file beside `path`, flushed to disk, then moved over `path` in one step:
    a crash or a full disk leaves the previous file whole."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise CannotWrite(f"cannot write {path}: {error.strerror or error}") from None


def claim_out_dir(args, checkpoint):
    """Refuse a run that would write over the run in --out-dir: only the same stage resumed from its last.pt
    continues it, stage 2 from its stage-1 files keeps them as stage1_*.pt; anything else needs --overwrite."""
    out = os.path.join(args.out_dir, "")
    present = [name for name in RUN_FILES if os.path.exists(out + name)]
    resume = os.path.abspath(args.resume or "")
    inside = bool(args.resume) and os.path.dirname(resume) == os.path.abspath(args.out_dir)
    if not present or args.overwrite or inside and resume.endswith(f"{os.sep}last.pt") and continues(checkpoint, args):
        return
    last_stage = load_checkpoint(out + "last.pt")[1].get("stage", 1) if os.path.exists(out + "last.pt") else 1
    if inside and args.stage == 2 and checkpoint.get("stage", 1) == 1 and last_stage == 1:
        for name in ("best.pt", "last.pt"):
            if os.path.exists(out + name):
                with open(out + name, "rb") as file:
                    atomic_write(f"{out}stage1_{name}", file.read())
        return say(f"kept stage 1's files in {args.out_dir} as stage1_best.pt and stage1_last.pt")
    raise InputError(f"--out-dir {args.out_dir} holds a run ({', '.join(present)}) that this one would write over: "
                     f"continue it with --resume {out}last.pt{' --stage 2' if last_stage == 2 else ''}, replace it "
                     f"with --overwrite, or pick another --out-dir")


def bf16_autocast(precision, device):
    """--precision auto: bf16 only where the device computes it in hardware (CUDA compute capability 8.0+,
    not a T4; CPUs with AMX or AVX512-BF16); elsewhere it is emulated and slower. MPS trains in fp32."""
    if precision != "auto" or device.type != "cpu":
        native = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        return precision == "bf16" or precision == "auto" and native
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:  # Linux; elsewhere fp32
        return bool(set(file.read().split()) & {"amx_bf16", "avx512_bf16"})
    return False


@torch.no_grad()
def update_average(pairs, decay):
    """Move each weight and BatchNorm statistic of the average towards the model's by 1 - decay: `pairs`
    of their state_dict tensors, which share the modules' storage."""
    for mine, theirs in pairs:
        if mine.is_floating_point():
            mine.lerp_(theirs, 1 - decay)
        else:  # BatchNorm's count of batches
            mine.copy_(theirs)


def make_optimizers(model, args):
    """Muon for the kernels but ADAMW_LAYERS', AdamW for the rest; weight decay on the kernels only."""
    layers = [m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
              and name not in ADAMW_LAYERS]
    kernels = [p for p in model.parameters() if p.dim() > 1 and all(p is not m.weight for m in layers)]
    adamw = torch.optim.AdamW([{"params": kernels, "weight_decay": args.weight_decay}, {"params": [
        p for p in model.parameters() if p.dim() == 1], "weight_decay": 0.0}], lr=args.lr)
    groups = [{"params": [m.weight for m in layers if type(m) is kind], "out_dim": out_dim}
              for kind, out_dim in ((nn.Conv2d, 0), (nn.ConvTranspose2d, 1))]
    return [Muon(groups, args.lr, MUON_MOMENTUM, args.weight_decay), adamw]


def set_lr(optimizers, lr):
    for group in (group for optimizer in optimizers for group in optimizer.param_groups):
        group["lr"] = lr


def new_run(args, model, device):
    """What training changes, all of it in the checkpoint; the weight average is evaluated and saved."""
    run = argparse.Namespace(model=model, optimizers=make_optimizers(model, args), best_loss=math.inf, stop=[])
    # One rule sets every lr: this scheduler's, on the first optimizer, which the others follow.
    run.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(run.optimizers[0], **PLATEAU)
    run.generator = torch.Generator().manual_seed(args.seed)  # on the CPU: the same batches and warps everywhere
    run.average = copy.deepcopy(model) if args.ema_decay else model
    run.pairs = list(zip(run.average.state_dict().values(), model.state_dict().values()))  # once, off the hot path
    run.bf16 = bf16_autocast(args.precision, device)
    return run


def continues(checkpoint, args):
    return checkpoint.get("stage", 1) == args.stage and "train_model_state_dict" in checkpoint


def start(run, args, checkpoint):
    """Load --resume into `run`: all of it to continue the same stage, the weights (and the earlier stage's
    history) to start a stage from. Returns the first epoch to train."""
    run.history = [row for row in checkpoint.get("history", []) if int(row["stage"]) < args.stage]
    if not continues(checkpoint, args):
        if checkpoint:
            say(f"stage {args.stage}: starting from the weights of {args.resume}, fresh optimizer, lr {args.lr:g}")
        return 1
    try:
        run.model.load_state_dict(checkpoint["train_model_state_dict"])
        for optimizer, state in zip(run.optimizers, checkpoint["optimizer_state_dicts"]):
            optimizer.load_state_dict(state)
        run.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        run.generator.set_state(checkpoint["generator_state"].cpu())
        run.best_loss, run.history, start_epoch = checkpoint["best_loss"], checkpoint["history"], checkpoint["epoch"]
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as error:  # an earlier layout, say
        raise InputError(f"{args.resume}: this train.py cannot continue it ({type(error).__name__} {str(error)[:80]}); "
                         f"--stage 2 starts from its weights") from None
    before = checkpoint.get("args", {})
    changed = [name for name in TRAINING_FLAGS if name in before and before[name] != getattr(args, name)]
    if changed:  # the saved optimizer state would keep the old lr and decay
        say(f"warning: continuing {args.resume} with changed " + ", ".join(f"--{name.replace('_', '-')} (was "
            f"{before[name]})" for name in changed) + "; this is not the run an uninterrupted one would give",
            file=sys.stderr)
        set_lr(run.optimizers, run.optimizers[0].param_groups[0]["lr"] * args.lr / before.get("lr", args.lr))
        for group in (g for optimizer in run.optimizers for g in optimizer.param_groups if g["weight_decay"]):
            group["weight_decay"] = args.weight_decay
    say(f"continuing stage {args.stage} from epoch {start_epoch} of {args.resume}")
    return start_epoch + 1


def check_finite(values, what):
    """Raise NonFiniteLoss naming the first inf or NaN of `values`, counted from 1."""
    if not torch.isfinite(values).all():
        raise NonFiniteLoss(f"{what} {int((~torch.isfinite(values)).nonzero()[0]) + 1}")


def per_image_mse(model, images):
    """Mean squared error of each image's reconstruction, float64 [N] on the CPU (fp32 on every device)."""
    model.eval()
    with torch.inference_mode():
        errors = [(model(x)[0] - x).pow(2).mean(dim=(1, 2, 3)) for x in data.batches(images, EVAL_BATCH_SIZE)]
    return torch.cat(errors).cpu().double()


def train_epoch(run, images, args, epoch):
    """One pass over `images` in a shuffled order; returns the mean training loss. The losses stay on
    the device until the epoch's end (reading one back would make the CPU wait for a GPU)."""
    run.model.train()
    num_batches = math.ceil(len(images) / args.batch_size)
    losses, shown = torch.zeros(num_batches, device=images.device), sys.stderr.isatty()
    progress = tqdm(data.batches(images, args.batch_size, run.generator), total=num_batches, leave=False,
                    desc=f"stage {args.stage} epoch {epoch}/{args.epochs}", dynamic_ncols=True, disable=not shown)
    for index, batch in enumerate(progress):
        if args.stage == 2:
            batch = data.augment(batch, run.generator)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=run.bf16):
            loss = F.mse_loss(run.model(batch)[0].float(), batch)
        for optimizer in run.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in run.optimizers:
            optimizer.step()
        if run.average is not run.model:
            step = (epoch - 1) * num_batches + index
            warmup = (1 + step) / (10 + step) if args.stage == 1 else 1  # from random weights: forget them soon
            update_average(run.pairs, min(args.ema_decay, warmup))
        losses[index] = loss.detach()
        if run.stop:
            raise Stopped()
    check_finite(losses, "training batch")
    return losses.mean().item()


def save_epoch(args, run, epoch, test_loss, improved):
    """history.csv, best.pt when the test loss improved, then last.pt. Each checkpoint holds the history
    up to its epoch: after a kill at any point, a resume from last.pt redoes the epoch identically."""
    checkpoint = {"epoch": epoch, "model_state_dict": run.average.state_dict(), "loss": test_loss, "stage": args.stage,
                  "args": vars(args), "train_model_state_dict": run.model.state_dict(), "best_loss": run.best_loss,
                  "optimizer_state_dicts": [optimizer.state_dict() for optimizer in run.optimizers],
                  "scheduler_state_dict": run.scheduler.state_dict(), "generator_state": run.generator.get_state(),
                  "history": run.history}
    rows = [",".join(HISTORY_FIELDS)] + [",".join(str(row[key]) for key in HISTORY_FIELDS) for row in run.history]
    atomic_write(os.path.join(args.out_dir, "history.csv"), "\n".join(rows + [""]).encode())
    buffer = io.BytesIO()  # serialized once, in memory: a full disk is then an OSError of atomic_write
    torch.save(checkpoint, buffer)
    for name in ("best.pt", "last.pt") if improved else ("last.pt",):
        atomic_write(os.path.join(args.out_dir, name), buffer.getvalue())


def run_training(args, argv, run, start_epoch, train_images, test_images):
    """The epochs of one stage; returns the exit status."""
    say(f"training arithmetic: {'bf16 autocast' if run.bf16 else 'fp32'} (--precision {args.precision})")
    saved_epoch = None
    # Ctrl-C and SIGTERM (sent by `timeout`, job schedulers, Docker) are noted, for the loop to end the
    # run between batches, never inside a file being written.
    previous = [signal.signal(number, lambda number, _frame: run.stop.append(number)) for number in STOP_SIGNALS]
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            lr = run.optimizers[0].param_groups[0]["lr"]
            if lr < args.min_lr:
                say(f"stage {args.stage} stopped after epoch {epoch - 1}: the lr ({lr:.2e}) fell below --min-lr "
                    f"{args.min_lr:g}, so learning has stopped; --min-lr 0 runs every epoch")
                break
            started = time.perf_counter()
            train_loss = train_epoch(run, train_images, args, epoch)
            errors = per_image_mse(run.average, test_images)
            check_finite(errors, "test image")
            test_loss, seconds = errors.mean().item(), time.perf_counter() - started
            run.scheduler.step(test_loss)
            set_lr(run.optimizers, run.optimizers[0].param_groups[0]["lr"])
            improved, run.best_loss = test_loss < run.best_loss, min(run.best_loss, test_loss)
            run.history.append({"stage": args.stage, "epoch": epoch, "train_loss": f"{train_loss:.7f}",
                                "test_loss": f"{test_loss:.7f}", "lr": f"{lr:.3e}", "seconds": f"{seconds:.2f}"})
            save_epoch(args, run, epoch, test_loss, improved)
            saved_epoch = epoch
            say(f"stage {args.stage} epoch {epoch:3d}/{args.epochs}  train {train_loss:.7f}  test {test_loss:.7f}"
                f"{' *' if improved else '  '}  lr {lr:.2e}  {seconds:5.1f}s")
            if run.stop:
                raise Stopped()
    except NonFiniteLoss as error:
        return data.fail(f"the loss became non-finite at epoch {epoch}, {error} (lr {lr:g}); try a lower --lr. "
                         f"Checkpoints were left as they were.", EXIT_NON_FINITE)
    except (Stopped, CannotWrite) as error:
        kept = [word for before, word in zip([None, *argv], argv) if "--resume" not in (word, before)
                and not word.startswith("--resume=")]
        command = shlex.join(["python", "train.py", *kept, "--resume", os.path.join(args.out_dir, "last.pt")])
        way_on = (f"{os.path.join(args.out_dir, 'last.pt')} holds epoch {saved_epoch}, resume with: {command}"
                  if saved_epoch else "no epoch was saved; run the same command again")
        if isinstance(error, CannotWrite):
            return data.fail(f"{error}; {way_on}", EXIT_CANNOT_WRITE)
        return data.fail(f"stopped by {signal.Signals(run.stop[0]).name}; {way_on}", 128 + run.stop[0])
    finally:
        for number, handler in zip(STOP_SIGNALS, previous):
            signal.signal(number, handler)
    say(f"best test loss of stage {args.stage}: {run.best_loss:.7f}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        device = data.choose_device(args.device)
        say(f"device: {device}\nconfig: " + " ".join(f"{key}={value}" for key, value in vars(args).items()))
        lock = lock_out_dir(args.out_dir)
        torch.manual_seed(args.seed)
        model, checkpoint = load_checkpoint(args.resume, device) if args.resume else (AutoEncoder().to(device), {})
        (train_images, _), (test_images, _) = data.load_splits(args.data_dir, args.dataset, device, args.subset,
                                                               args.plain_resize)
        if len(train_images) < args.batch_size:
            raise InputError(f"{len(train_images)} training images, fewer than one batch (--batch-size "
                             f"{args.batch_size}): add images or pass a smaller --batch-size")
        run = new_run(args, model.to(memory_format=torch.channels_last), device)  # NHWC: faster convolutions
        start_epoch = start(run, args, checkpoint)
        claim_out_dir(args, checkpoint)
    except (InputError, CheckpointError) as error:
        return data.fail(error)
    except CannotWrite as error:
        return data.fail(error, EXIT_CANNOT_WRITE)
    except KeyboardInterrupt:
        return data.fail("stopped by Ctrl-C before training began; nothing was written", 130)
    with lock:
        return run_training(args, argv, run, start_epoch, train_images, test_images)


if __name__ == "__main__":
    sys.exit(main())
