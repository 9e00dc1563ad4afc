"""Your own pictures as MNIST digits: read, then framed the way MNIST framed its digits.

MNIST's digits were size-normalised to fit a 20x20 box keeping their aspect ratio
(antialiased, hence the grey levels), then placed in a 28x28 image so that the centre
of mass of their pixels sits at the centre. A model trained on them has never seen a
digit of another size or place, so a photo, a scan or a drawing goes the same way:

1. the paper levelled to black: the picture's border is its paper, and a smooth surface
   fitted to it (a grey page, a brightness gradient, a vignette) is subtracted; what lies
   within the paper's noise counts as nothing;
2. light ink on black, as MNIST: inverted where the ink is darker than the paper;
3. the digit found: the connected pieces of ink that are not specks of noise;
4. cropped to them, scaled to fit 20x20 (antialiased), its ink brought to full
   brightness, and shifted by whole pixels so that its centre of mass is at (14, 14).

MNIST's own digits come through unchanged: they are light on black, fill 20 pixels,
and sit at their centre of mass already. `plain_resize` instead squeezes the whole
picture to 28x28, for pictures that already fill their frame as the model expects.
"""

import functools
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

import data

IMAGE_SIZE = 28
BOX = 20  # MNIST's box for the digit
CENTRE = 14.0  # where MNIST's centres of mass sit, in pixel indices (measured: 13.5 to 14.5)
WORKING_SIZE = 512  # larger pictures are shrunk to this first: 20x20 needs no more
PAPER_FITS = 4
BORDER_FRACTION = 0.03  # the paper is sampled in a band along the border, this share of the picture wide
NOISE_SIGMAS = 4.0  # ink is this many standard deviations of the paper's noise above it
HALF_GREY = 0.5 / 255  # the least a pixel must exceed the paper by to count as ink
PIECES_GRID = 64
SPECK_FRACTION = 0.05  # ink pieces with less than this share of the largest piece's ink are noise
MIN_CONTRAST = 0.1  # ink less bright than this above the paper is no ink: a blank picture
TEST_FRACTION = 0.1  # of a folder of pictures without train/ and test/
SPLIT_SEED = 0
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
OPENABLE = {extension for extension, kind in Image.registered_extensions().items() if kind in Image.OPEN}


class NotAnImage(Exception):
    """A file that is not a picture Pillow knows, by its name and its content."""


class Unreadable(Exception):
    """A file named as a picture that Pillow cannot decode: corrupt, truncated or empty."""


def read_gray(path):
    """The picture at `path` as uint8 [H, W], upright (its EXIF orientation applied, as a
    phone's photo needs), 16-bit grey scaled to 8 bits, transparent parts as white paper."""
    is_picture = path.lower().endswith(tuple(OPENABLE))
    try:
        with warnings.catch_warnings(), Image.open(path) as picture:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are read shrunk
            picture.draft("L", (WORKING_SIZE, WORKING_SIZE))  # a JPEG decodes straight at a smaller size
            picture = ImageOps.exif_transpose(picture)
            if picture.mode in SIXTEEN_BIT_MODES:
                picture = Image.fromarray((np.asarray(picture, dtype=np.float64) / 257).clip(0, 255).round()
                                          .astype(np.uint8))
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                white = Image.new("RGBA", picture.size, "white")
                picture = Image.alpha_composite(white, picture.convert("RGBA"))
            gray = picture.convert("L")  # decodes the whole file: a truncated one fails here
    except Image.DecompressionBombError as error:
        raise Unreadable(f"{error.args[0].split(' could')[0]}, more than Pillow opens safely; shrink it") from None
    except UnidentifiedImageError as error:
        if is_picture:
            raise Unreadable(f"Pillow cannot decode it ({error})") from None
        raise NotAnImage(path) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise Unreadable(f"Pillow cannot decode it ({error})") from None
    return TF.pil_to_tensor(gray)[0]


def paper_surface(picture):
    """A quadratic surface through the paper of `picture` [H, W], fitted to its border (a
    band of BORDER_FRACTION of its size), refitted without the outliers, ink that touches
    the border; and the paper's noise, a robust standard deviation (zero for a clean picture)."""
    height, width = picture.shape
    band = max(1, round(BORDER_FRACTION * min(height, width)))
    border = torch.ones(height, width, dtype=torch.bool)
    border[band:-band, band:-band] = False
    rows, cols = border.nonzero().unbind(1)
    design = quadratic_terms(rows.double() / height, cols.double() / width)
    values = picture[rows, cols].double()
    coefficients = torch.zeros(design.shape[1], 1, dtype=torch.float64)
    coefficients[0] = values.median()  # most of the border is paper: start from its level
    for _ in range(PAPER_FITS):  # each fit to the pixels near the last one
        offsets = (values - (design @ coefficients)[:, 0]).abs()
        inliers = offsets <= 3 * 1.4826 * offsets.median() + HALF_GREY
        if inliers.sum() < 2 * design.shape[1]:
            break
        coefficients = torch.linalg.lstsq(design[inliers], values[inliers, None]).solution
    spread = (values - (design @ coefficients)[:, 0]).abs().median()
    y = (torch.arange(height, dtype=torch.float64) / height)[:, None]
    x = torch.arange(width, dtype=torch.float64) / width
    c = coefficients[:, 0].tolist()  # of quadratic_terms, evaluated on the whole grid at once
    surface = c[0] + c[1] * y + c[2] * x + c[3] * y * y + c[4] * y * x + c[5] * x * x
    return surface.float(), 1.4826 * spread.item()


def quadratic_terms(y, x):
    return torch.stack([torch.ones_like(y), y, x, y * y, y * x, x * x], dim=1)


def levelled_ink(picture):
    """`picture` [H, W] in [0, 1] with its paper levelled to 0 and its ink bright, inverted
    where the ink is darker than the paper; and the level below which it is paper and noise.
    The ink is what lies farthest from the paper, by a 3x3 average, which noise does not reach."""
    surface, noise = paper_surface(picture)
    levelled = picture - surface
    smoothed = F.avg_pool2d(levelled[None, None], 3, stride=1, padding=1, count_include_pad=False)
    return (-levelled if -smoothed.min() > smoothed.max() else levelled), NOISE_SIGMAS * noise


def ink_pieces(mask):
    """Each pixel of `mask` [H, W] labelled by its 8-connected piece (0 outside the mask)."""
    labels = torch.where(mask, torch.arange(1, mask.numel() + 1, dtype=torch.float32).reshape(mask.shape), 0.0)
    while True:  # every pixel takes the largest label around it until the pieces agree
        spread = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(spread, labels):
            return labels.long()
        labels = spread


def digit_box(ink, floor):
    """Rows and columns (top, bottom, left, right) around the ink brighter than `floor` that
    is not specks, or None where there is none. The pieces are told apart on a grid of at
    most PIECES_GRID cells a side (a speck within a cell of the digit joins it)."""
    mask = ink > floor
    if not mask.any():
        return None
    cell = -(-max(mask.shape) // PIECES_GRID)
    cell_ink = F.avg_pool2d((ink * mask)[None, None], cell, ceil_mode=True, divisor_override=1)[0, 0]
    pieces = ink_pieces(cell_ink > 0)
    mass = torch.zeros(int(pieces.max()) + 1).index_add_(0, pieces.flatten(), cell_ink.flatten())
    mass[0] = 0
    digit_cells = mass[pieces] >= SPECK_FRACTION * mass.max()
    digit = mask & digit_cells.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[: mask.shape[0], : mask.shape[1]]
    rows, cols = digit.any(1).nonzero()[:, 0], digit.any(0).nonzero()[:, 0]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def shrink(gray):
    """A picture larger than WORKING_SIZE on its longer side, shrunk to it (antialiased)."""
    scale = WORKING_SIZE / max(gray.shape)
    if scale >= 1:
        return gray
    size = [max(1, round(side * scale)) for side in gray.shape]
    return TF.resize(gray[None], size, antialias=True)[0]


def frame_like_mnist(gray):
    """A picture, uint8 [H, W], as an MNIST digit, uint8 [28, 28]; None where it has no ink."""
    ink, noise = levelled_ink(shrink(gray.float() / 255))
    box = digit_box(ink, max(noise, HALF_GREY))
    if box is None:
        return None
    top, bottom, left, right = box
    digit = ink[top:bottom, left:right]
    if digit.max().item() - noise < max(MIN_CONTRAST, noise):
        return None
    digit = (digit - noise).clamp(min=0)
    scale = BOX / max(digit.shape)
    if scale != 1:
        size = [max(1, round(side * scale)) for side in digit.shape]
        digit = TF.resize(digit[None], size, antialias=True)[0].clamp(min=0)
    return centred(digit / digit.max())  # the ink at full brightness, as MNIST's


def centred(digit):
    """`digit` [h, w] in [0, 1] as uint8, pasted into a black 28x28 image and shifted by whole
    pixels so that its centre of mass lies at CENTRE (whatever falls outside is cut, as in MNIST)."""
    # The faintest ink stays 1, not 0, so the digit keeps its 20 pixels: framed again, it is unchanged.
    levels = torch.where(digit > 0, (digit * 255).round().clamp(min=1), 0)
    height, width = levels.shape
    mass = levels.sum()
    com_y = (levels.sum(1) * torch.arange(height)).sum() / mass
    com_x = (levels.sum(0) * torch.arange(width)).sum() / mass
    top, left = round(CENTRE - com_y.item()), round(CENTRE - com_x.item())
    canvas = torch.zeros(IMAGE_SIZE + 2 * BOX, IMAGE_SIZE + 2 * BOX, dtype=torch.uint8)  # room on every side
    canvas[BOX + top : BOX + top + height, BOX + left : BOX + left + width] = levels.to(torch.uint8)
    return canvas[BOX : BOX + IMAGE_SIZE, BOX : BOX + IMAGE_SIZE].clone()


def plain_resized(gray):
    """The whole picture resized to 28x28, inverted by the border rule: an image whose
    border is light on average (dark ink on white paper) is inverted."""
    image = TF.resize(gray[None], [IMAGE_SIZE, IMAGE_SIZE], antialias=True)[0]
    border = torch.cat([image[0], image[-1], image[:, 0], image[:, -1]])
    return 255 - image if border.float().mean() > 127.5 else image


def read_picture(path, plain_resize=False):
    """The picture at `path` as an MNIST digit, uint8 [28, 28], or None if it has no ink.
    Raises NotAnImage or Unreadable."""
    gray = read_gray(path)
    return plain_resized(gray) if plain_resize else frame_like_mnist(gray)



def picture_paths(paths):
    """The files that `paths` name: files as they are, folders walked (sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(top, name) for top, _, names in os.walk(path) for name in names)
        elif os.path.exists(path):
            files.append(path)
        else:
            raise data.InputError(f"{path}: no such file or folder")
    return files


def read_pictures(paths, plain_resize=False, folder=None):
    """The pictures among `paths` as uint8 [N, 28, 28], and the paths of those kept. Files that
    are not pictures (links to nothing too) are skipped and counted, a picture without ink is
    skipped and named; a file named as a picture that cannot be decoded is a InputError."""
    images, kept, skipped = [], [], []
    shown = sys.stderr.isatty() and len(paths) >= 1000  # framing takes a few ms a picture
    for path in tqdm(paths, desc="reading pictures", leave=False, disable=not shown):
        name = os.path.relpath(path, folder) if folder else path
        try:
            if not os.path.isfile(path):  # a link to nothing, a socket, ...
                raise NotAnImage(path)
            image = read_picture(path, plain_resize)
        except NotAnImage:
            skipped.append(name)
            continue
        except Unreadable as error:
            raise data.InputError(f"{path}: cannot read this image: {error}") from None
        if image is None:
            data.say(f"skipped {name}: no ink found (a blank picture?)")
            continue
        images.append(image)
        kept.append(path)
    if skipped:
        data.say(f"{folder or 'the files given'}: skipped {len(skipped)} files that are not images "
                 f"(e.g. {skipped[0]})")
    if not images:
        raise data.InputError(f"{folder or ' '.join(paths)}: no pictures with ink found (PNG, JPEG, BMP, ...)")
    return torch.stack(images), kept


@functools.cache
def read_folder(folder, plain_resize=False):
    """Every picture under `folder` as uint8 [N, 28, 28], and each one's subfolder name (None
    for a picture in `folder` itself)."""
    images, kept = read_pictures(picture_paths([folder]), plain_resize, folder)
    parts = [os.path.relpath(path, folder).split(os.sep) for path in kept]
    return images, tuple(part[0] if len(part) > 1 else None for part in parts)


def class_labels(classes, all_classes):
    """Labels 0, 1, ... in sorted order of the subfolder names; NO_LABEL for all if any picture
    of the data set lies outside a subfolder."""
    if None in all_classes:
        return torch.full((len(classes),), data.NO_LABEL)
    names = sorted(set(all_classes))
    return torch.tensor([names.index(name) for name in classes])


def folder_split(root, train, plain_resize=False):
    """One split of a folder of pictures, as data.load_split returns it: root/train/ and
    root/test/, or else a seeded TEST_FRACTION of all the pictures in root is the test set."""
    if not os.path.isdir(root):
        raise data.InputError(f"--data-dir {root}: no such folder")
    folders = [os.path.join(root, "train"), os.path.join(root, "test")]
    present = [os.path.isdir(folder) for folder in folders]
    if any(present) and not all(present):
        have, lack = ("train", "test") if present[0] else ("test", "train")
        raise data.InputError(f"--data-dir {root} has {have}/ but no {lack}/: add {lack}/, or put the class "
                             f"folders in {root} itself to have a tenth kept for testing")
    if not any(present):
        images, classes = read_folder(root, plain_resize)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        num_test = max(1, round(TEST_FRACTION * len(images)))
        chosen = order[num_test:] if train else order[:num_test]
        return images[chosen], class_labels(classes, classes)[chosen]
    both = [read_folder(folder, plain_resize) for folder in folders]
    images, classes = both[0] if train else both[1]
    return images, class_labels(classes, both[0][1] + both[1][1])
