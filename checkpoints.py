"""A run's files, written so that nothing finished is lost: one run per folder (an OS
lock), no silent overwrite of another run, and checkpoints and history.csv written
atomically, so that a crash, a kill or a full disk leaves the previous files whole;
Ctrl-C and SIGTERM become an exception that waits until the files are written.
Checkpoints are read by model.load_checkpoint.

    python checkpoints.py results/mnist/best.pt results/mnist/autoencoder.pt

writes a weights-only copy of a checkpoint to share: the model, its epoch, stage, test
MSE and flags, without the optimizer state and training weights that --resume needs.
"""

import argparse
import contextlib
import csv
import io
import os
import signal
import sys
import tempfile

import torch

import data
from model import CheckpointError, load_checkpoint

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no guard against two runs in one folder
    fcntl = None

HISTORY_FIELDS = ["stage", "epoch", "train_loss", "test_loss", "lr", "seconds"]
SHARED_KEYS = ["model_state_dict", "epoch", "stage", "loss", "args"]
RUN_FILES = ["best.pt", "last.pt", "history.csv"]
UMASK = os.umask(0o022)
os.umask(UMASK)  # reading the umask means setting it; this puts it back


class FolderInUse(Exception):
    """The out-dir is locked by another run, or holds another run; the message says what to do."""


class CannotWrite(Exception):
    """A checkpoint or the history could not be written; the message names the file and the reason."""


class Stopped(Exception):
    """SIGINT (Ctrl-C) or SIGTERM arrived; `signal_number` says which."""

    def __init__(self, signal_number):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


@contextlib.contextmanager
def stop_signals_handled_by(handler):
    """Ctrl-C and SIGTERM (sent by `timeout`, job schedulers, Docker) go to `handler` in the block."""
    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, previous_handler in previous.items():
            signal.signal(number, previous_handler)


def raise_stopped(signal_number, _frame):
    raise Stopped(signal_number)


@contextlib.contextmanager
def stop_signals_deferred():
    """Hold back Ctrl-C and SIGTERM until the block is done, so an epoch's files are written whole."""
    received = []
    with stop_signals_handled_by(lambda number, _frame: received.append(number)):
        yield
    if received:
        raise Stopped(received[0])


def lock_out_dir(folder):
    """Hold an OS lock on <folder>/.lock for as long as the returned file is open (at most
    as long as this process lives), so that a second run into the same folder fails at
    once; a killed run leaves no stale lock. record_pid names the holder once the run starts."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, ".lock"), "a+")
    except OSError as error:
        raise FolderInUse(f"--out-dir {folder}: cannot write there ({error.strerror or error})") from None
    if fcntl is None:
        return lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        raise FolderInUse(f"--out-dir {folder} is in use by another train.py run "
                         f"(pid {lock.read().strip() or 'unknown'}); wait for it or pick another --out-dir") from None
    return lock


def record_pid(lock):
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()


def refuse_overwrite(args):
    """A run may write into a folder holding another run only to continue it, or when told --overwrite."""
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(args.out_dir, name))]
    continues = args.resume and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(args.out_dir)
    if present and not continues and not args.overwrite:
        raise FolderInUse(f"--out-dir {args.out_dir} already holds a run ({', '.join(present)}): continue it with "
                         f"--resume {os.path.join(args.out_dir, 'last.pt')}, replace it with --overwrite, "
                         f"or pick another --out-dir")


def atomic_write(path, content):
    """Write bytes to a temp file beside `path`, flush them to disk, then move it over `path`
    in one step: a crash or a full disk leaves the previous file whole."""
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                                 prefix=f".{os.path.basename(path)}.")
        os.chmod(temporary, 0o666 & ~UMASK)  # as open() would make it; mkstemp makes it private
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise CannotWrite(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if temporary and os.path.exists(temporary):
            os.remove(temporary)


def save_checkpoint(path, checkpoint):
    # Serialized in memory first, so that a full disk is an OSError, not a torch.save internal error.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(path, buffer.getvalue())


def write_history(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode())


def read_history(path):
    """The rows of a history.csv, each a dict of HISTORY_FIELDS to strings."""
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def earlier_history(resume, stage, start_epoch):
    """The rows of the run in --resume's folder that come before this run's first epoch.

    They carry stage 1 into stage 2's history, and drop any row written after the
    last checkpoint of an interrupted run.
    """
    if not resume:
        return []
    path = os.path.join(os.path.dirname(resume), "history.csv")
    if not os.path.exists(path):
        return []
    return [row for row in read_history(path) if (int(row["stage"]), int(row["epoch"])) < (stage, start_epoch)]


def keep_starting_checkpoint(args, checkpoint):
    """This stage will write best.pt and last.pt anew: keep the previous stage's file under its own name."""
    resume, out_dir = os.path.abspath(args.resume), os.path.abspath(args.out_dir)
    if os.path.dirname(resume) != out_dir or os.path.basename(resume) not in ("best.pt", "last.pt"):
        return
    kept = os.path.join(args.out_dir, f"stage{checkpoint.get('stage', 1)}_{os.path.basename(resume)}")
    with open(resume, "rb") as file:
        atomic_write(kept, file.read())
    print(f"kept {args.resume} as {kept}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a weights-only copy of a checkpoint to share.")
    parser.add_argument("checkpoint", help="a checkpoint of train.py, e.g. best.pt")
    parser.add_argument("weights", help="the file to write, e.g. autoencoder.pt")
    args = parser.parse_args(argv)
    try:
        _, checkpoint = load_checkpoint(args.checkpoint)
        save_checkpoint(args.weights, {key: checkpoint[key] for key in SHARED_KEYS if key in checkpoint})
    except (CheckpointError, CannotWrite) as error:
        return data.fail(error)
    print(f"wrote {args.weights} ({os.path.getsize(args.weights):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
