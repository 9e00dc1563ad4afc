"""MNIST in memory, shuffled batches, and the stage-2 augmentation as batched tensor ops.

Each split (of MNIST, Fashion-MNIST or a folder of your own images) is read once and
kept as one uint8 tensor on the training device; a batch is an index into it, scaled to
[0, 1] exactly as ToTensor does (no normalization: the reference's loss numbers depend on it).

The stage-2 augmentation is the reference's RandomPerspective(distortion_scale=0.4,
p=0.5) followed by RandomRotation(degrees=(-10, 10)), with each sample's parameters
drawn from torchvision's distributions, but applied to a whole batch at once through
`grid_sample` instead of image by image.
"""

import functools
import gzip
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from torchvision import datasets
from tqdm import tqdm

import fast
import pictures
from model import first_line

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
# --dataset choices: torchvision's sets, or "images", a folder of your own pictures.
DATASET_NAMES = [*DATASETS, "images"]
# What one class of each data set is called in metric names and picture labels.
CLASS_WORDS = {"mnist": "digit", "fashion-mnist": "class", "images": "class"}
EXIT_USAGE = 2  # every script's exit status for a mistake in its flags or input files
TEST_FRACTION = 0.1  # of a folder of images without train/ and test/
SPLIT_SEED = 0
NO_LABEL = -1  # the label of an image that is not in a class subfolder
IMAGE_SIZE = 28
DISTORTION_SCALE = 0.4
PERSPECTIVE_P = 0.5
MAX_ROTATION_DEGREES = 10.0
INWARD_DIRECTIONS = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]])  # of each corner, as (x, y)


class DataError(Exception):
    """Data (or a device) that cannot be used; the message says what to do."""


def add_arguments(parser, dataset=True):
    """The flags every script shares: --data-dir, --dataset (unless dataset=False) and --device."""
    parser.add_argument("--data-dir", default="./data",
                        help="folder holding MNIST/raw/, downloaded there if missing (default: %(default)s)")
    if dataset:
        parser.add_argument("--dataset", choices=DATASET_NAMES, default="mnist",
                            help="mnist, fashion-mnist or images, a folder of your own (default: %(default)s)")
        parser.add_argument("--plain-resize", action="store_true",
                            help="your own pictures resized whole to 28x28, not framed as MNIST frames its digits: "
                                 "for pictures that already fill their frame (objects, Fashion-MNIST-like images)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto: cuda, then mps, then cpu (default: %(default)s)")


def fail(error, status=EXIT_USAGE):
    """Every script's way out on bad input: one line on stderr, then the exit status to return."""
    print(f"error: {error}", file=sys.stderr)
    return status


def choose_device(name):
    """--device: auto picks cuda, then mps, then cpu; the device is set up as fast.prepare_device says."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DataError("--device mps: MPS is not available; use --device cpu")
    device = torch.device(name)
    fast.prepare_device(device)
    return device


def raw_folder(data_dir, dataset="mnist"):
    return os.path.join(data_dir, DATASETS[dataset].__name__, "raw")


def raw_file_names(dataset="mnist"):
    """The four uncompressed IDX file names torchvision expects in the raw folder."""
    return [os.path.basename(url)[: -len(".gz")] for url, _md5 in DATASETS[dataset].resources]


def decompress_gz_files(folder, names):
    """Unpack NAME.gz to NAME where only the .gz is there (e.g. Debian's dataset packages)."""
    for name in names:
        target, packed = os.path.join(folder, name), os.path.join(folder, name + ".gz")
        if os.path.exists(target) or not os.path.exists(packed):
            continue
        temporary = target + ".tmp"
        with gzip.open(packed, "rb") as source, open(temporary, "wb") as sink:
            shutil.copyfileobj(source, sink)
        os.replace(temporary, target)


def load_split(data_dir, train, dataset="mnist", plain_resize=False):
    """Return (images uint8 [N, 28, 28], labels int64 [N]) of one split.

    Downloads when the files are missing (torchvision's own download); raises DataError
    with a one-line fix when they are missing and cannot be downloaded, or are corrupt.
    """
    if dataset == "images":
        return image_folder_split(data_dir, train, plain_resize)
    folder = raw_folder(data_dir, dataset)
    try:
        decompress_gz_files(folder, raw_file_names(dataset))
    except OSError as error:
        raise DataError(f"cannot unpack the .gz files in {folder}: {error}") from None
    try:
        split = DATASETS[dataset](data_dir, train=train, download=True)
    except (RuntimeError, OSError) as error:
        if not all(os.path.exists(os.path.join(folder, n)) for n in raw_file_names(dataset)):
            raise DataError(
                f"{dataset} is not in {folder}/ and could not be downloaded "
                f"({first_line(error)}). "
                f"Put the four files {', '.join(raw_file_names(dataset))} (or their .gz) "
                f"there, or pass --data-dir pointing at the folder that holds "
                f"{DATASETS[dataset].__name__}/raw/."
            ) from None
        raise DataError(f"{dataset} files in {folder}/ are corrupt ({first_line(error)}); "
                        f"delete them to download again") from None
    except (AssertionError, ValueError) as error:
        raise DataError(f"{dataset} files in {folder}/ are corrupt (bad magic number or size: "
                        f"{first_line(error)}); delete them to download again") from None
    images, labels = split.data, split.targets
    if images.dim() != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(labels) != len(images):
        raise DataError(
            f"{dataset} files in {folder}/ are corrupt: images {tuple(images.shape)}, "
            f"labels {tuple(labels.shape)}; delete them to download again"
        )
    return images, labels.long()


def image_folder_split(root, train, plain_resize=False):
    """One split of a folder of images: root/train/ and root/test/, or else a seeded
    TEST_FRACTION of all the images in root goes to test. See read_image_folder."""
    if not os.path.isdir(root):
        raise DataError(f"--data-dir {root}: no such folder")
    folders = [os.path.join(root, "train"), os.path.join(root, "test")]
    if not all(os.path.isdir(folder) for folder in folders):
        images, classes = read_image_folder(root, plain_resize)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        num_test = max(1, round(TEST_FRACTION * len(images)))
        chosen = order[num_test:] if train else order[:num_test]
        return images[chosen], class_labels(classes, classes)[chosen]
    both = [read_image_folder(folder, plain_resize) for folder in folders]
    images, classes = both[0] if train else both[1]
    return images, class_labels(classes, both[0][1] + both[1][1])


def class_labels(classes, all_classes):
    """Labels 0, 1, ... in sorted order of the subfolder names; none (NO_LABEL) if any
    image of the data set lies outside a subfolder."""
    if None in all_classes:
        return torch.full((len(classes),), NO_LABEL)
    names = sorted(set(all_classes))
    return torch.tensor([names.index(name) for name in classes])


@functools.cache
def read_image_folder(folder, plain_resize=False):
    """Every picture under `folder` as uint8 [N, 28, 28], framed as MNIST frames its digits
    (pictures.py) or, with `plain_resize`, resized whole; and each one's subfolder name
    (None for a picture in `folder` itself)."""
    images, kept = read_pictures(picture_paths([folder]), plain_resize, folder)
    parts = [os.path.relpath(path, folder).split(os.sep) for path in kept]
    return images, tuple(part[0] if len(part) > 1 else None for part in parts)


def picture_paths(paths):
    """The files that `paths` name: files as they are, folders walked (sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(top, name) for top, _, names in os.walk(path) for name in names)
        elif os.path.exists(path):
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def read_pictures(paths, plain_resize=False, folder=None):
    """The pictures among `paths` as uint8 [N, 28, 28], and the paths of those kept.

    Any size, mode and format that Pillow reads. Files that are not pictures are skipped and
    counted, and a picture without ink is skipped and named; a file named as a picture
    (.png, .jpg, ...) that cannot be decoded is a DataError.
    """
    images, kept, skipped = [], [], []
    shown = sys.stderr.isatty() and len(paths) >= 1000  # framing takes a few ms a picture
    for path in tqdm(paths, desc="reading pictures", leave=False, disable=not shown):
        name = os.path.relpath(path, folder) if folder else path
        try:
            image = pictures.read_picture(path, plain_resize)
        except pictures.NotAnImage:
            skipped.append(name)
            continue
        except pictures.Unreadable as error:
            raise DataError(f"{path}: cannot read this image: {error}") from None
        if image is None:
            print(f"skipped {name}: no ink found (a blank picture?)")
            continue
        images.append(image)
        kept.append(path)
    if skipped:
        print(f"{folder or 'the files given'}: skipped {len(skipped)} files that are not images (e.g. {skipped[0]})")
    if not images:
        raise DataError(f"{folder or ' '.join(paths)}: no pictures with ink found (PNG, JPEG, BMP, ... "
                        f"{'in it or its subfolders' if folder else ''})")
    return torch.stack(images), kept


def load_splits(data_dir, dataset, device, subset=None, plain_resize=False):
    """[(train images, labels), (test images, labels)] on `device`, cut to the first `subset`."""
    splits = []
    for train in (True, False):
        images, labels = load_split(data_dir, train=train, dataset=dataset, plain_resize=plain_resize)
        splits.append((images[:subset].to(device), labels[:subset].to(device)))
    return splits


def to_float(images_uint8):
    """uint8 [B, 28, 28] -> float [B, 1, 28, 28] in [0, 1], the same numbers as ToTensor."""
    return images_uint8.unsqueeze(1).float().div_(255)


def to_device(tensor, device):
    """A CPU tensor on `device`; to a CUDA GPU through pinned memory, so that the copy does
    not make the CPU wait for the GPU's queued work."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def shuffled_batches(images, batch_size, generator):
    """Yield float batches of `images` in an order drawn from `generator`, a CPU generator
    whatever the images' device (the last batch may be short)."""
    order = to_device(torch.randperm(len(images), generator=generator), images.device)
    for start in range(0, len(images), batch_size):
        yield to_float(images[order[start : start + batch_size]])


def ordered_batches(images, batch_size):
    for start in range(0, len(images), batch_size):
        yield to_float(images[start : start + batch_size])


def sample_perspective_endpoints(batch_size, generator, size=IMAGE_SIZE):
    """Per-sample corner targets [B, 4, 2] as RandomPerspective.get_params draws them.

    Each corner moves inwards by a whole number of pixels, uniform in [0, bound),
    independently in x and y; the corners are top-left, top-right, bottom-right,
    bottom-left, as torchvision orders them.
    """
    bound = int(DISTORTION_SCALE * (size // 2)) + 1
    offsets = torch.randint(0, bound, (batch_size, 4, 2), generator=generator)
    return perspective_startpoints(size) + INWARD_DIRECTIONS * offsets


def perspective_startpoints(size=IMAGE_SIZE):
    """The image corners, top-left, top-right, bottom-right, bottom-left, as (x, y)."""
    last = size - 1
    return torch.tensor([[0, 0], [last, 0], [last, last], [0, last]])


def perspective_coefficients(startpoints, endpoints):
    """The 8 homography coefficients [B, 8] that map each output pixel back to the input.

    The same linear system as torchvision's _get_perspective_coeffs, solved for the whole
    batch at once, in float64 as torchvision does (on the CPU: on a GPU the solve would make
    the CPU wait, and Apple's MPS has no float64).
    """
    end = endpoints.double()
    start = startpoints.double().expand_as(end)
    x, y = end[..., 0], end[..., 1]
    u, v = start[..., 0], start[..., 1]
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    system = torch.stack([rows_u, rows_v], dim=2).reshape(-1, 8, 8)
    target = torch.stack([u, v], dim=-1).reshape(-1, 8)
    return torch.linalg.solve(system, target).float()


# Cached per device: building a tensor from a Python list on a GPU waits for the GPU.
@functools.cache
def pixel_centres(device, size=IMAGE_SIZE):
    """Every pixel centre as homogeneous (x + 0.5, y + 0.5, 1), row by row: [H * W, 3]."""
    centres = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x.flatten(), y.flatten(), torch.ones_like(x.flatten())], dim=-1)


def perspective_grid(coefficients, size=IMAGE_SIZE):
    """Sampling grid [B, H, W, 2] for grid_sample(align_corners=False), as torchvision builds it.

    One batched matrix product maps every pixel centre through each sample's homography
    (x, y rows scaled to grid_sample's [-1, 1] range); a division by the third row projects.
    """
    a_to_f, g_h = coefficients[:, :6].unflatten(1, (2, 3)), coefficients[:, 6:]
    homography = torch.cat([a_to_f / (0.5 * size), F.pad(g_h, (0, 1), value=1.0)[:, None]], dim=1)
    projected = pixel_centres(coefficients.device, size) @ homography.transpose(1, 2)
    return (projected[..., :2] / projected[..., 2:] - 1.0).unflatten(1, (size, size))


def perspective(batch, coefficients):
    """Warp each image by its homography `coefficients` [B, 8] (bilinear, zeros outside)."""
    grid = perspective_grid(coefficients, batch.shape[-1])
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(batch, degrees):
    """Rotate each image counter-clockwise about its centre (nearest, zeros outside)."""
    radians = degrees * (math.pi / 180)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], -1), torch.stack([sin, cos, zeros], -1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def draw_augmentation(batch_size, generator):
    """The stage-2 parameters of each sample, drawn on the CPU from a CPU generator, so that
    a seed gives the same warps on every device: [B, 10], the 8 perspective coefficients,
    1.0 where the perspective applies (else 0.0), and the rotation in degrees."""
    warp = torch.rand(batch_size, generator=generator) < PERSPECTIVE_P
    endpoints = sample_perspective_endpoints(batch_size, generator)
    degrees = torch.empty(batch_size).uniform_(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, generator=generator)
    coefficients = perspective_coefficients(perspective_startpoints(), endpoints)
    return torch.cat([coefficients, warp[:, None].float(), degrees[:, None]], dim=1)


def augment(batch, generator):
    """Stage-2 augmentation of a float batch [B, 1, 28, 28], parameters drawn per sample."""
    parameters = to_device(draw_augmentation(len(batch), generator), batch.device)  # one copy to a GPU
    coefficients, warp, degrees = parameters[:, :8], parameters[:, 8] > 0.5, parameters[:, 9]
    # Warping every image and keeping the unwarped ones where the coin said no avoids a
    # data-dependent shape (a host sync on GPU); bilinear sampling at the pixel centres of
    # an identity warp would not return the images bit for bit, so they are kept as is.
    warped = torch.where(warp[:, None, None, None], perspective(batch, coefficients), batch)
    return rotate(warped, degrees)
