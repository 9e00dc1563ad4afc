"""MNIST (or Fashion-MNIST, or a folder of your own pictures) in memory as uint8, its batches as
ToTensor scales them, and the stage-2 warps: the reference's RandomPerspective(0.4, p=0.5) then
RandomRotation((-10, 10)), drawn as torchvision draws them, applied to whole batches. Then what
every script shares: flags, messages, signals, files written whole, the device.
"""

import contextlib
import math
import os
import pickle
import signal
import sys

import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from model import first_line

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
NO_LABEL = -1  # the label of a picture of your own that is not in a class subfolder
EXIT_USAGE = 2  # every script's exit status for a mistake in its flags or input files
EXIT_CANNOT_WRITE = 4  # and for a file it cannot write
# Ctrl-C; `kill`, `timeout`, job schedulers; a closed terminal or notebook cell (none on Windows)
STOP_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
IMAGE_SIZE = 28
DISTORTION_SCALE = 0.4
PERSPECTIVE_P = 0.5
MAX_ROTATION_DEGREES = 10.0
# The corners (x, y): top-left, top-right, bottom-right, bottom-left, and the way each moves in.
CORNERS = torch.tensor([[0, 0], [27, 0], [27, 27], [0, 27]])
INWARD = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]])
READERS = (read_image_file, read_label_file)  # of a split's two raw files
READ_ERRORS = (RuntimeError, OSError, AssertionError, ValueError, EOFError, pickle.PickleError)

class InputError(Exception):
    """A mistake in the flags or input files, or a device that is not there: the message says."""

class CannotWrite(Exception):
    """A file could not be written; the message names it and the reason."""

class Interrupted(KeyboardInterrupt):
    """A stop signal arrived: Ctrl-C, SIGTERM or SIGHUP (its number is args[0])."""

def add_arguments(parser):
    """The flags every script shares."""
    add = parser.add_argument
    add("--data-dir", default="./data", help="holds MNIST/raw/, downloaded if missing (./data)")
    add("--dataset", choices=[*DATASETS, "images"], default="mnist", help="images: your folder")
    add("--plain-resize", action="store_true", help="your pictures resized whole, not framed")
    add("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="auto: cuda, mps")

def say(*parts, file=None):
    """print, flushed; what it cannot encode escaped, unread output (a closed pipe) dropped."""
    file = file or sys.stdout
    encoding = getattr(file, "encoding", None) or "utf-8"
    text = " ".join(map(str, parts)).encode(encoding, "backslashreplace").decode(encoding)
    try:
        print(text, file=file, flush=True)
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), file.fileno())

def progress_shown():
    """Whether a progress bar is watched: on a terminal or in a notebook cell, not in a log file."""
    in_cell = type(sys.stderr).__module__.startswith("ipykernel")  # a kernel's stream, to a cell
    return sys.stderr is not None and (sys.stderr.isatty() or in_cell)

def fail(error, status=EXIT_USAGE):
    """Every script's way out on bad input: one line on stderr, then the exit status to return."""
    say(f"error: {error}", file=sys.stderr)
    return status

def atomic_write(path, content):
    """Bytes to a temp file beside `path`, then moved over it: a crash leaves the old file whole."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(temporary, "wb", buffering=0) as file:  # unbuffered: fsync sees every byte
            file.write(content)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise CannotWrite(f"cannot write {path}: {error.strerror or error}") from None

def stop_name(number):
    """A stop signal as the user knows it."""
    return "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name

@contextlib.contextmanager
def stop_signals(handler=None):
    """While the block runs, Ctrl-C, SIGTERM and SIGHUP go to `handler`, or raise Interrupted."""
    def interrupt(number, _frame):
        raise Interrupted(number)
    previous = {number: signal.signal(number, handler or interrupt) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)

@contextlib.contextmanager
def script_run():
    """Every main runs in this: stop signals raise Interrupted, fp32 stays fp32 on CUDA (a GPU
    computes the CPU's numbers), closed standard streams open on /dev/null, not on our files."""
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:  # closed: os.open takes the lowest free number, this one
            os.open(os.devnull, os.O_RDWR)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32, cudnn.allow_tf32 = False, False
    try:
        with stop_signals():
            yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before

def choose_device(name):
    """The device that --device names; auto: cuda, then mps, then cpu."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else ("mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise InputError(f"--device {name}: no such device is available here; use --device cpu")
    return torch.device(name)

def load_split(data_dir, train, dataset="mnist", plain_resize=False):
    """(images uint8 [N, 28, 28], labels int64 [N]) of one split, downloaded if missing."""
    if dataset == "images":
        import pictures  # only for your own pictures: the four training files work without it
        return pictures.folder_split(data_dir, train, plain_resize)
    kind = DATASETS[dataset]
    folder = os.path.join(data_dir, kind.__name__, "raw")
    files = [os.path.join(folder, os.path.basename(url)[:-3]) for url, _ in kind.resources]  # .gz
    present = all(os.path.exists(path) for path in files)
    try:
        if present:  # read as they are: torchvision would read a stale copy of its old layout
            split_files = files[:2] if train else files[2:]
            images, labels = [read(path) for read, path in zip(READERS, split_files)]
        else:
            split = kind(data_dir, train=train, download=True)
            images, labels = split.data, split.targets
    except READ_ERRORS as error:  # EOF's and pickle's too: a stale copy of the old layout
        if not present:
            names = ", ".join(os.path.basename(path) for path in files)
            raise InputError(f"{dataset} is not in {folder}/ and could not be downloaded"
                             f" ({first_line(error)}); put {names} there, or pass --data-dir naming"
                             f" the folder that holds {kind.__name__}/raw/") from None
        raise InputError(f"{dataset} files in {folder}/ are corrupt ({first_line(error)}); delete"
                         f" them to download again") from None
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(labels) != len(images):
        raise InputError(f"{dataset} files in {folder}/ are corrupt: images {tuple(images.shape)},"
                         f" labels {tuple(labels.shape)}; delete them to download again")
    return images, labels.long()

def load_splits(data_dir, dataset, device, subset=None, plain_resize=False):
    """[(train images, labels), (test images, labels)] on `device`, cut to the first `subset`."""
    splits = [load_split(data_dir, train, dataset, plain_resize) for train in (True, False)]
    return [(images[:subset].to(device), labels[:subset].to(device)) for images, labels in splits]

def to_float(images_uint8):
    """uint8 [B, 28, 28] -> float [B, 1, 28, 28] in [0, 1], the same numbers as ToTensor."""
    return images_uint8.unsqueeze(1).float().div_(255)

def to_device(tensor, device):
    """A CPU tensor on `device`, through pinned memory to a GPU: the CPU does not wait for it."""
    pinned = tensor.pin_memory() if device.type == "cuda" else tensor
    return pinned.to(device, non_blocking=True)

def batches(images, batch_size, generator=None):
    """Float batches of `images`, in order or shuffled by a CPU `generator` (the same anywhere)."""
    count = len(images)
    order = torch.randperm(count, generator=generator) if generator else torch.arange(count)
    order = to_device(order, images.device)
    for start in range(0, len(images), batch_size):
        yield to_float(images[order[start : start + batch_size]])

def sample_perspective_endpoints(batch_size, generator):
    """Corner targets [B, 4, 2] as RandomPerspective draws them: in by 0 to 0.4 * 14 pixels."""
    bound = int(DISTORTION_SCALE * (IMAGE_SIZE // 2)) + 1
    return CORNERS + INWARD * torch.randint(0, bound, (batch_size, 4, 2), generator=generator)

def perspective_coefficients(startpoints, endpoints):
    """The homographies [B, 8] from output pixels to input, as torchvision solves them (float64)."""
    end, start = endpoints.double(), startpoints.double().expand_as(endpoints)
    x, y, u, v = end[..., 0], end[..., 1], start[..., 0], start[..., 1]
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    system = torch.stack([rows_u, rows_v], dim=2).reshape(-1, 8, 8)
    return torch.linalg.solve(system, torch.stack([u, v], dim=-1).reshape(-1, 8)).float()

def perspective(batch, coefficients):
    """Each image warped by its homography [B, 8] (bilinear, zeros outside), as torchvision does."""
    size = batch.shape[-1]
    a_to_f, g_h = coefficients[:, :6].unflatten(1, (2, 3)), coefficients[:, 6:]
    homography = torch.cat([a_to_f / (0.5 * size), F.pad(g_h, (0, 1), value=1.0)[:, None]], dim=1)
    steps = torch.arange(size, device=batch.device, dtype=torch.float32) + 0.5  # pixel centres
    y, x = torch.meshgrid(steps, steps, indexing="ij")
    centres = torch.stack([x.flatten(), y.flatten(), torch.ones_like(x.flatten())], dim=-1)
    projected = centres @ homography.transpose(1, 2)  # homogeneous (x, y, 1)
    grid = (projected[..., :2] / projected[..., 2:] - 1.0).unflatten(1, (size, size))
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

def rotate(batch, degrees):
    """Rotate each image counter-clockwise about its centre (nearest, zeros outside)."""
    cos, sin = torch.cos(degrees * (math.pi / 180)), torch.sin(degrees * (math.pi / 180))
    zeros = torch.zeros_like(cos)
    rows = [torch.stack([cos, -sin, zeros], -1), torch.stack([sin, cos, zeros], -1)]
    grid = F.affine_grid(torch.stack(rows, 1), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="nearest", padding_mode="zeros", align_corners=False)

def draw_augmentation(batch_size, generator):
    """Stage-2 parameters [B, 10] from the CPU: the perspective's 8, 1 if it applies, degrees."""
    warp = torch.rand(batch_size, generator=generator) < PERSPECTIVE_P
    endpoints = sample_perspective_endpoints(batch_size, generator)
    degrees = torch.empty(batch_size)
    degrees.uniform_(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, generator=generator)
    coefficients = perspective_coefficients(CORNERS, endpoints)
    return torch.cat([coefficients, warp[:, None].float(), degrees[:, None]], dim=1)

def augment(batch, generator):
    """Stage-2 augmentation of a float batch [B, 1, 28, 28], parameters drawn per sample."""
    parameters = to_device(draw_augmentation(len(batch), generator), batch.device)  # one copy
    coefficients, warp, degrees = parameters[:, :8], parameters[:, 8] > 0.5, parameters[:, 9]
    # All warped, then the coin's no kept unwarped: no GPU sync, and the images kept bit for bit.
    warped = torch.where(warp[:, None, None, None], perspective(batch, coefficients), batch)
    return rotate(warped, degrees)
