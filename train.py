"""Train the MNIST autoencoder: stage 1 from scratch on plain digits, then stage 2 fine-tunes it
on warped digits (random perspective and rotation). In a notebook: train.main(["--stage", "1"]).

    python train.py --stage 1 --epochs 80
    python train.py --stage 2 --resume best.pt
    python train.py --resume last.pt              # continue an interrupted run exactly

Each epoch appends a row to <out-dir>/history.csv and writes last.pt, and best.pt when the test MSE
improved. A stage ends early once ReduceLROnPlateau has brought the lr below --min-lr.
"""

import argparse
import contextlib
import copy
import dataclasses
import io
import math
import os
import shlex
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from data import CannotWrite, InputError, atomic_write, say
from model import AutoEncoder, CheckpointError, load_checkpoint, per_image_mse
from muon import Muon

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no guard against two runs in one folder
    fcntl = None

STAGE_LR = {1: 0.02, 2: 1e-3}  # these settings were chosen by the runs in results/experiments
MUON_MOMENTUM = 0.95
PLATEAU = {"factor": 0.5, "patience": 1, "threshold": 1e-3}  # ReduceLROnPlateau on the test MSE
ADAMW_LAYERS = ("encoder.0.0", "decoder.4.1")  # the 1->16 and 16->1 convolutions do better there
AVERAGE_WARMUP = 10  # steps: early in stage 1, the weight average follows the model
EXIT_NON_FINITE = 3  # besides data's EXIT_USAGE and EXIT_CANNOT_WRITE
RUN_FILES = ["best.pt", "last.pt", "history.csv"]
HISTORY_FIELDS = ["stage", "epoch", "train_loss", "test_loss", "lr", "seconds"]
# The flags of the data, and those that make a continued run differ from an uninterrupted one.
DATA_FLAGS = ["dataset", "plain_resize", "subset"]
TRAINING_FLAGS = ["batch_size", "lr", "weight_decay", "ema_decay", "precision", *DATA_FLAGS]
LIMITS = [  # (flag, the lowest, above the highest) of the numbers a run accepts
          ("epochs", 1, math.inf), ("lr", 1e-12, math.inf), ("min_lr", 0, math.inf),
          ("batch_size", 1, math.inf), ("weight_decay", 0, math.inf), ("ema_decay", 0, 1),
          ("seed", 0, 2**64), ("subset", 1, math.inf)]

class NonFiniteLoss(Exception):
    """The loss became inf or NaN; the message names the batch."""

# === The flags ===================================================================================
def parse_args(argv):
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", type=int, choices=[1, 2], default=1, help="2: fine-tune on warped digits")
    add("--epochs", type=int, default=80, help="epochs of this stage at most (default: 80)")
    add("--lr", type=float, help="of every parameter (default: 0.02, stage 2: 0.001)")
    add("--min-lr", type=float, default=1e-5, help="end the stage below it; 0: never (1e-5)")
    add("--batch-size", type=int, default=64, help="(default: 64)")
    add("--weight-decay", type=float, default=0.01, help="of the kernels (default: 0.01)")
    add("--ema-decay", type=float, default=0.999, help="of the weights' average; 0: off (0.999)")
    add("--resume", metavar="PATH", help="checkpoint to continue (same stage), or to start from")
    data.add_arguments(parser)
    add("--out-dir", default=".", help="where checkpoints and history.csv go (default: .)")
    add("--overwrite", action="store_true", help="replace another run in --out-dir")
    add("--seed", type=int, default=1, help="weights, shuffling and warps (default: 1)")
    add("--subset", type=int, help="use only the first N training and test images")
    add("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 if fast")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = STAGE_LR[args.stage]
    for name, low, high in LIMITS:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and low <= value < high):
            parser.error(f"argument --{name.replace('_', '-')}: must be in [{low:g}, {high:g})")
    if args.lr < args.min_lr:
        parser.error(f"--lr {args.lr:g} is below --min-lr {args.min_lr:g}")
    if args.stage == 2 and not args.resume:
        parser.error("--stage 2 fine-tunes a trained model: pass --resume best.pt from stage 1")
    return args

# === The model's optimizers and arithmetic =======================================================
def make_optimizers(model, args):
    """Muon for the kernels but ADAMW_LAYERS', AdamW for the rest; weight decay on kernels only."""
    convolutions = [(name, module) for name, module in model.named_modules()
                    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    on_muon = [module for name, module in convolutions if name not in ADAMW_LAYERS]
    muon_groups = [
        {"params": [m.weight for m in on_muon if type(m) is nn.Conv2d], "out_dim": 0},
        {"params": [m.weight for m in on_muon if type(m) is nn.ConvTranspose2d], "out_dim": 1},
    ]
    kernels = [module.weight for name, module in convolutions if name in ADAMW_LAYERS]
    vectors = [p for p in model.parameters() if p.dim() == 1]  # biases and BatchNorm's scales
    adamw_groups = [{"params": kernels, "weight_decay": args.weight_decay},
                    {"params": vectors, "weight_decay": 0.0}]
    muon = Muon(muon_groups, args.lr, MUON_MOMENTUM, args.weight_decay)
    return [muon, torch.optim.AdamW(adamw_groups, lr=args.lr)]

def set_lr(optimizers, lr):
    for group in [group for optimizer in optimizers for group in optimizer.param_groups]:
        group["lr"] = lr

def bf16_autocast(precision, device):
    """--precision auto: bf16 where the device computes it in hardware (CUDA capability 8.0 and
    later, not a T4; CPUs with AMX or AVX512-BF16), fp32 where it would be emulated, and on MPS."""
    if precision != "auto" or device.type == "mps":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:  # Linux only
        return bool(set(file.read().split()) & {"amx_bf16", "avx512_bf16"})
    return False

@dataclasses.dataclass
class Run:
    """What training changes. All but `stop` goes into each checkpoint, for an exact resume."""
    model: nn.Module  # the weights being trained
    average: nn.Module  # their moving average, evaluated and saved (the model with --ema-decay 0)
    optimizers: list  # Muon for the inner kernels, then AdamW for the rest
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau  # on the first optimizer's lr
    generator: torch.Generator  # on the CPU: the same batches and warps on every device
    bf16: bool  # train in bf16 autocast; evaluation is always fp32
    history: list = dataclasses.field(default_factory=list)  # a dict an epoch, both stages
    best_loss: float = math.inf  # the lowest test MSE of this stage so far
    stop: list = dataclasses.field(default_factory=list)  # stop signals noted while training

def new_run(args, model, device):
    optimizers = make_optimizers(model, args)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizers[0], **PLATEAU)
    average = copy.deepcopy(model) if args.ema_decay else model
    generator = torch.Generator().manual_seed(args.seed)
    bf16 = bf16_autocast(args.precision, device)
    return Run(model, average, optimizers, scheduler, generator, bf16)

# === One epoch, and the test loss ================================================================
@torch.no_grad()
def update_average(pairs, decay):
    """Each (average's, model's) state_dict tensor pair: the average moved by 1 - decay."""
    for mine, theirs in pairs:
        if mine.is_floating_point():
            mine.lerp_(theirs, 1 - decay)
        else:  # BatchNorm's count of batches
            mine.copy_(theirs)

def train_epoch(run, images, args, epoch):
    """One pass over `images` in a shuffled order; returns the mean training loss."""
    run.model.train()
    pairs = list(zip(run.average.state_dict().values(), run.model.state_dict().values()))
    num_batches = math.ceil(len(images) / args.batch_size)
    # On the device until the epoch's end: reading each loss back would make the CPU wait for a GPU.
    losses = torch.zeros(num_batches, device=images.device)
    progress = tqdm(data.batches(images, args.batch_size, run.generator), total=num_batches,
                    desc=f"stage {args.stage} epoch {epoch}/{args.epochs}", leave=False,
                    disable=not data.progress_shown())
    for index, batch in enumerate(progress):
        if args.stage == 2:
            batch = data.augment(batch, run.generator)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=run.bf16):
            reconstruction = run.model(batch)[0]
        # In fp32, as evaluation: the mean of 50,000 errors in bf16 keeps 3 significant digits.
        loss = F.mse_loss(reconstruction.float(), batch)
        for optimizer in run.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in run.optimizers:
            optimizer.step()
        if run.average is not run.model:
            step = (epoch - 1) * num_batches + index
            # An average of 1,000 steps would remember the random start: in stage 1 it forgets it.
            warmup = (1 + step) / (AVERAGE_WARMUP + step) if args.stage == 1 else 1
            update_average(pairs, min(args.ema_decay, warmup))
        losses[index] = loss.detach()
        if run.stop:  # a stop signal was noted: the run stops between batches
            raise data.Interrupted(run.stop[0])
    check_finite(losses, "training batch")
    return losses.mean().item()

def check_finite(values, what):
    """Raise NonFiniteLoss naming the first inf or NaN of `values`, counted from 1."""
    finite = torch.isfinite(values)
    if not finite.all():
        raise NonFiniteLoss(f"{what} {int((~finite).nonzero()[0]) + 1}")

def test_loss(run, images):
    """The test MSE of the weight average, in fp32."""
    errors = per_image_mse(run.average, images)
    check_finite(errors, "test image")
    return errors.mean().item()

# === The loop ====================================================================================
def train_stage(args, argv, run, first_epoch, train_images, test_images):
    """The epochs of one stage, each one saved as it ends; returns the exit status."""
    saved_epoch = None
    try:
        for epoch in range(first_epoch, args.epochs + 1):
            lr = run.optimizers[0].param_groups[0]["lr"]
            if lr < args.min_lr:
                say(f"stage {args.stage} stopped after epoch {epoch - 1}: the lr fell below"
                    f" --min-lr {args.min_lr:g} (0 runs every epoch)")
                break
            started = time.perf_counter()
            train_loss = train_epoch(run, train_images, args, epoch)
            with data.stop_signals():  # nothing is written while testing: a stop cuts it short
                loss = test_loss(run, test_images)
            seconds = time.perf_counter() - started
            run.scheduler.step(loss)
            # The scheduler lowers the first optimizer's lr; every other group follows it.
            set_lr(run.optimizers, run.optimizers[0].param_groups[0]["lr"])
            improved = loss < run.best_loss
            run.best_loss = min(run.best_loss, loss)
            run.history.append({"stage": args.stage, "epoch": epoch,
                                "train_loss": f"{train_loss:.7f}", "test_loss": f"{loss:.7f}",
                                "lr": f"{lr:.3e}", "seconds": f"{seconds:.2f}"})
            save_epoch(args, run, epoch, loss, improved)
            saved_epoch = epoch
            mark = " *" if improved else "  "
            say(f"stage {args.stage} epoch {epoch:3d}/{args.epochs}  train {train_loss:.7f}  test"
                f" {loss:.7f}{mark}  lr {lr:.2e}  {seconds:5.1f}s")
            if run.stop:
                raise data.Interrupted(run.stop[0])
    except NonFiniteLoss as error:
        return data.fail(f"the loss became non-finite at epoch {epoch}, {error} (lr {lr:g}); try"
                         f" a lower --lr. Checkpoints were left as they were.", EXIT_NON_FINITE)
    except CannotWrite as error:  # the epochs saved stay: say how to go on
        advice = resume_advice(args, argv, saved_epoch)
        return data.fail(f"{error}; {advice}", data.EXIT_CANNOT_WRITE)
    except data.Interrupted as stop:
        advice = resume_advice(args, argv, saved_epoch)
        return data.fail(f"stopped by {data.stop_name(stop.args[0])}; {advice}", 128 + stop.args[0])
    say(f"best test loss of stage {args.stage}: {run.best_loss:.7f}")
    return 0

def train(args, argv):
    """All that main does once the flags are read; returns the exit status."""
    device = data.choose_device(args.device)
    if args.dataset == "images":  # the run's files would be read among the pictures next time
        import pictures
        pictures.check_out_dir(args.out_dir, [args.data_dir], "--data-dir")
    say(f"device: {device}\nconfig:", *[f"{key}={value}" for key, value in vars(args).items()])
    if args.resume:
        model, checkpoint = load_checkpoint(args.resume)
    else:
        with torch.random.fork_rng(devices=[]):  # the seed draws the weights, and nothing else
            torch.default_generator.manual_seed(args.seed)
            model, checkpoint = AutoEncoder(), {}
    (train_images, _), (test_images, _) = data.load_splits(args.data_dir, args.dataset, device,
                                                           args.subset, args.plain_resize)
    if len(train_images) < args.batch_size:
        raise InputError(f"{len(train_images)} training images, fewer than one batch (--batch-size"
                         f" {args.batch_size}): add images or pass a smaller --batch-size")
    # channels_last (NHWC): the CPU's convolutions are faster in it
    run = new_run(args, model.to(device, memory_format=torch.channels_last), device)
    first_epoch = resume(run, args, checkpoint)
    with locked_out_dir(args.out_dir):
        claim_out_dir(args, checkpoint)
        arithmetic = "bf16 autocast" if run.bf16 else "fp32"
        say(f"training arithmetic: {arithmetic} (--precision {args.precision})")
        # From here on a stop signal is only noted, and acted on between batches, not mid-write.
        with data.stop_signals(lambda number, _frame: run.stop.append(number)):
            return train_stage(args, argv, run, first_epoch, train_images, test_images)

def main(argv=()):
    """Train one stage as `python train.py ARGS` does, `argv` the list of ARGS (["--stage", "1"]).
    Returns the exit status (0 done, 2 bad flags or files, 3 a non-finite loss, 4 a file not
    written, 130/129/143 Ctrl-C/SIGHUP/SIGTERM); leaves torch's seed, TF32 and handlers as found."""
    try:
        args = parse_args(argv)
    except SystemExit as exit:  # argparse has printed the usage and the mistake, or the help
        return exit.code
    with data.script_run():
        try:
            return train(args, list(argv))
        except (InputError, CheckpointError) as error:
            return data.fail(error)
        except CannotWrite as error:
            return data.fail(error, data.EXIT_CANNOT_WRITE)
        except data.Interrupted as stop:
            number = stop.args[0]
            return data.fail(f"stopped by {data.stop_name(number)} before training began; nothing"
                             f" was written", 128 + number)

# === The run folder: its lock, files written whole, no run written over, resume ==================
@contextlib.contextmanager
def locked_out_dir(folder):
    """An OS lock on <folder>/.lock while the block runs: a second run there stops, told our pid."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, ".lock"), "a+", buffering=1)  # a line is written at once
    except OSError as error:
        raise InputError(f"--out-dir {folder}: cannot write there ({error.strerror})") from None
    with lock:
        try:
            if fcntl:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise InputError(f"--out-dir {folder} is in use by another train.py run (pid"
                             f" {lock.read().strip()}): wait, or pick another one") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        yield

def continues(checkpoint, args):
    """Whether `checkpoint` is a run of this stage to continue, not weights to start from."""
    return checkpoint.get("stage", 1) == args.stage and "train_model_state_dict" in checkpoint

def claim_out_dir(args, checkpoint):
    """Write over a run in --out-dir only to continue it, or to start stage 2 (keeping stage 1)."""
    out = os.path.join(args.out_dir, "")
    present = [name for name in RUN_FILES if os.path.exists(out + name)]
    if not present or args.overwrite:
        return
    resume = os.path.abspath(args.resume or "")
    inside = bool(args.resume) and os.path.dirname(resume) == os.path.abspath(args.out_dir)
    if inside and os.path.basename(resume) == "last.pt" and continues(checkpoint, args):
        return
    has_last = os.path.exists(out + "last.pt")
    last_stage = load_checkpoint(out + "last.pt")[1].get("stage", 1) if has_last else 1
    if inside and args.stage == 2 and checkpoint.get("stage", 1) == 1 and last_stage == 1:
        for name in ("best.pt", "last.pt"):
            if os.path.exists(out + name):
                with open(out + name, "rb") as file:
                    atomic_write(f"{out}stage1_{name}", file.read())
        say(f"kept stage 1's files in {args.out_dir} as stage1_best.pt and stage1_last.pt")
        return
    stage_flag = " --stage 2" if last_stage == 2 else ""
    raise InputError(f"--out-dir {args.out_dir} holds a run ({', '.join(present)}) that this one"
                     f" would write over: continue it with --resume {out}last.pt{stage_flag},"
                     f" replace it with --overwrite, or pick another --out-dir")

def resume(run, args, checkpoint):
    """Load --resume into `run` (to start a stage, only its weights); returns the first epoch."""
    run.history = [row for row in checkpoint.get("history", []) if int(row["stage"]) < args.stage]
    if not continues(checkpoint, args):
        if checkpoint:
            say(f"stage {args.stage}: starting from the weights of {args.resume}, fresh"
                f" optimizer, lr {args.lr:g}")
        other_data = ", ".join(changed_flags(args, checkpoint, DATA_FLAGS))
        if other_data:
            say(f"warning: {args.resume} was trained on other data: {other_data}", file=sys.stderr)
        return 1
    try:
        run.model.load_state_dict(checkpoint["train_model_state_dict"])
        for optimizer, state in zip(run.optimizers, checkpoint["optimizer_state_dicts"]):
            optimizer.load_state_dict(state)
        run.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        run.generator.set_state(checkpoint["generator_state"].cpu())
        run.best_loss, run.history = checkpoint["best_loss"], checkpoint["history"]
        last_epoch = checkpoint["epoch"]
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as error:
        reason = f"{type(error).__name__} {str(error)[:80]}"  # an earlier layout, say
        raise InputError(f"{args.resume}: this train.py cannot continue it ({reason}); --stage 2"
                         f" starts from its weights") from None
    changed = changed_flags(args, checkpoint, TRAINING_FLAGS)
    if changed:
        say(f"warning: continuing {args.resume} with changed {', '.join(changed)}: not the run an"
            f" uninterrupted one would give", file=sys.stderr)
        # The saved optimizer state holds the old lr and decay: the new flags rescale them.
        lr_before = checkpoint["args"].get("lr", args.lr)
        set_lr(run.optimizers, run.optimizers[0].param_groups[0]["lr"] * args.lr / lr_before)
        for group in [g for optimizer in run.optimizers for g in optimizer.param_groups]:
            if group["weight_decay"]:
                group["weight_decay"] = args.weight_decay
    say(f"continuing stage {args.stage} from epoch {last_epoch} of {args.resume}")
    return last_epoch + 1

def changed_flags(args, checkpoint, names):
    """The flags among `names` (and the pictures' folder) set otherwise in the checkpoint's run."""
    before, now = checkpoint.get("args", {}), vars(args)
    if now["dataset"] == "images" and before.get("dataset") == "images":
        names = [*names, "data_dir"]
    return [f"--{name.replace('_', '-')} (was {before[name]})" for name in names
            if name in before and before[name] != now[name]]

def save_epoch(args, run, epoch, test_loss, improved):
    """history.csv, best.pt if the test loss fell, last.pt: a resume redoes an epoch identically."""
    checkpoint = {"epoch": epoch, "stage": args.stage, "loss": test_loss, "args": vars(args),
                  "model_state_dict": run.average.state_dict(),
                  "train_model_state_dict": run.model.state_dict(), "best_loss": run.best_loss,
                  "optimizer_state_dicts": [optimizer.state_dict() for optimizer in run.optimizers],
                  "scheduler_state_dict": run.scheduler.state_dict(),
                  "generator_state": run.generator.get_state(), "history": run.history}
    rows = [",".join(HISTORY_FIELDS)]
    rows += [",".join(str(row[key]) for key in HISTORY_FIELDS) for row in run.history]
    atomic_write(os.path.join(args.out_dir, "history.csv"), "\n".join(rows + [""]).encode())
    buffer = io.BytesIO()  # serialized once, in memory: a full disk is then atomic_write's OSError
    torch.save(checkpoint, buffer)
    for name in ("best.pt", "last.pt") if improved else ("last.pt",):
        atomic_write(os.path.join(args.out_dir, name), buffer.getvalue())

def resume_advice(args, argv, saved_epoch):
    """How to go on after a stop: the command that resumes from the last epoch saved."""
    if saved_epoch is None:
        return "no epoch was saved; run the same command again"
    pairs = zip([None, *argv], argv)  # (the word before, the word)
    # All but "--resume PATH" and "--resume=PATH": the command resumes from last.pt instead.
    kept = [word for before, word in pairs if "--resume" not in (before, word[:8])]
    last = os.path.join(args.out_dir, "last.pt")
    return f"{last} holds epoch {saved_epoch}, resume with: " + shlex.join(
        ["python", "train.py", *kept, "--resume", last])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
