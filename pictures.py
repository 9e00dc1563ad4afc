"""Your own pictures as MNIST digits: read, then framed the way MNIST framed its digits.

    python pictures.py photo.jpg my-digits/ --out-dir framed    # 28x28 PNGs any MNIST model reads

MNIST's digits were size-normalised to fit a 20x20 box keeping their aspect ratio (antialiased,
hence the grey levels), then placed in a 28x28 image so that the centre of mass of their pixels
sits at the centre. A model trained on them has never seen a digit of another size or place, so a
photo, a scan or a drawing goes the same way:

1. the paper found and levelled to black: a morphological closing (an opening for light ink) with a
   window wider than any stroke keeps the light across the page, a shadow's edge and a desk along
   the border, and loses the strokes; the ink is what lies beyond it, light on black, as the share
   of the paper's light it takes (so that a stroke is as bright in a shadow as in full light);
2. ruled and grid lines, a margin, a paper's edge taken out: straight lines of ink that run across
   the picture from edge to edge, each as dark as the median along it; where a stroke crosses one,
   what the stroke adds to it is kept, as through a coloured filter;
3. the digit found: the connected pieces of its darkest ink (faint lines left over are not) that are
   not specks, nor at the border (a desk), and around them the soft edges of its strokes;
4. cropped to them, scaled to fit 20x20 (antialiased), its ink brought to full brightness, and
   shifted by whole pixels so that its centre of mass is at (14, 14).

MNIST's own digits come through unchanged (most of them bit for bit): they are light on black,
fill 20 pixels and sit at their centre of mass already. `plain_resize` instead squeezes the whole
picture to 28x28, for pictures that already fill their frame as the model expects.
"""

import argparse
import functools
import io
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

import data

IMAGE_SIZE = 28
BOX = 20  # MNIST's box for the digit
CENTRE = 14.0  # where MNIST's centres of mass sit, in pixel indices (measured: 13.5 to 14.5)
WORKING_SIZE = 256  # larger pictures are shrunk to this first: 20x20 needs no more
BACKGROUND_WINDOW = 0.25  # of the picture's shorter side: wider than any stroke of a digit in it
MIN_WINDOW = 11  # pixels: wider than MNIST's boldest strokes
SURFACE_FITS = 3  # of the smooth light across a picture, each without the pixels far from the last
CLEAR_SKEW = 1.0  # a skewness beyond this says which side is the ink (two levels: ink under 28%)
NOISE_SIGMAS = 4.0  # ink is this many standard deviations of the paper's noise above it
HALF_GREY = 0.5 / 255  # the least a pixel must exceed the paper by to count as ink
LINE_FRACTION = 0.8  # a line of ink along this share of a straight path across the picture...
LINE_END = 0.06  # ...that reaches within this share of both its ends is a printed line, not a digit
LINE_FLOOR = 0.5  # of the ink's floor: a line's median along it shows what single pixels do not
LINE_RUN = 7  # pixels along a path whose median ink counts: a line crossing it is no line along it
MAX_SLOPE = 0.2  # pixels a line may climb per pixel: up to 11 degrees of tilt
MAX_LINE_WIDTH = 0.03  # of the picture's side: a printed line is no wider
STRONG = 0.3  # of the darkest ink: a pen's stroke, where faint printed lines are not
RIM = 2  # pixels around it where a stroke's soft edge is found
PIECES_GRID = 64  # cells a side at most, on which pieces of ink are told apart
SPECK_FRACTION = 0.05  # ink pieces with less than this share of the largest piece's ink are noise
BORDER_WEIGHT = 0.5  # ink at the border is left out if a piece within weighs this share of it
DARKEST_PAPER = 0.1  # the least share of the light that paper, or a line on it, is taken to return
MIN_CONTRAST = 0.03  # ink less bright than this above the paper is no ink: a blank picture...
SIGNAL_TO_NOISE = 2.0  # ...and so is ink less than this many times the paper's noise above it
EDGE_GAP = 0.02  # of the picture's side: a digit's box nearer an edge reaches it (a tight crop)
MARGIN = 0.3  # of the picture's longer side: the paper added around a digit that reaches the edge
MIN_SPREAD = 12.0  # times its noise: a picture whose darkest and lightest differ less is blank
PROGRESS_DELAY = 1.0  # seconds of reading pictures before a progress bar is shown
TEST_FRACTION = 0.1  # of a folder of pictures without train/ and test/
SPLIT_SEED = 0
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
OPENABLE = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN}
# Picture formats of phones and cameras that Pillow cannot open without plugins.
COMMON_FORMATS = {"PNG", "JPEG", "JPG", "BMP", "GIF", "TIFF", "WEBP"}
UNOPENABLE = {".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf",
              ".rw2", ".raf", ".svg"} - OPENABLE


MAKER = "mnist-autoencoder"  # the "Software" text of the PNGs its scripts write, with the script
SCRIPT = "pictures.py"


class NotAnImage(Exception):
    """A file that is not a picture Pillow knows, by its name and its content."""


class Unreadable(Exception):
    """A file named as a picture that Pillow cannot decode: corrupt, truncated or empty."""


class ReachesEdge(Exception):
    """The digit's ink reaches the picture's edge (a crop tight to the ink), and no margin of
    paper added around it frames it."""


def read_gray(path):
    """The picture at `path` as uint8 [H, W], upright (its EXIF orientation applied, as a
    phone's photo needs), 16-bit grey scaled to 8 bits, transparent parts as white paper."""
    extension = os.path.splitext(path)[1].lower()
    if extension in UNOPENABLE:
        known = ", ".join(sorted({name[1:].upper() for name in OPENABLE} & COMMON_FORMATS))
        raise Unreadable(f"Pillow cannot open {extension[1:].upper()} pictures (it opens {known}"
                         f" and more): save it as JPEG or PNG")
    is_picture = extension in OPENABLE
    try:
        with warnings.catch_warnings(), Image.open(path) as picture:
            # Large photos are read shrunk: a JPEG decodes straight at a smaller size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture.draft("L", (WORKING_SIZE, WORKING_SIZE))
            picture = ImageOps.exif_transpose(picture)
            if picture.mode in SIXTEEN_BIT_MODES:
                wide = np.asarray(picture, dtype=np.float64)
                picture = Image.fromarray((wide / 257).clip(0, 255).round().astype(np.uint8))
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                white = Image.new("RGBA", picture.size, "white")
                picture = Image.alpha_composite(white, picture.convert("RGBA"))
            gray = picture.convert("L")  # decodes the whole file: a truncated one fails here
    except Image.DecompressionBombError as error:
        size = error.args[0].split(" could")[0]
        raise Unreadable(f"{size}, more than Pillow opens safely; shrink it") from None
    except UnidentifiedImageError as error:
        if is_picture:
            raise Unreadable(f"Pillow cannot decode it ({error})") from None
        raise NotAnImage(path) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise Unreadable(f"Pillow cannot decode it ({error})") from None
    return TF.pil_to_tensor(gray)[0]


def window(picture):
    """The side of a square window wider than any stroke of a digit in `picture` [H, W] (odd)."""
    return max(MIN_WINDOW, round(BACKGROUND_WINDOW * min(picture.shape))) | 1


def paper(picture, dark_ink, beyond_edge=True):
    """The paper under `picture` [H, W]: a morphological closing (for dark ink; an opening for light
    ink) with a square window wider than any stroke. Pen and marker strokes vanish from it, while a
    gradient of light and a shadow's edge stay. With `beyond_edge` the picture is first extended by
    its own border, so that a desk along that border stays too; without, only what lies within the
    picture counts, so that a stroke along the edge of a picture cropped to its ink vanishes."""
    size = window(picture)
    half = size // 2 if beyond_edge else 0
    height, width = picture.shape

    def grown(x):  # the largest value within the window, a row's stretch and then a column's
        x = F.max_pool2d(x, (1, size), stride=1, padding=(0, size // 2))
        return F.max_pool2d(x, (size, 1), stride=1, padding=(size // 2, 0))

    extended = F.pad(picture[None, None], (half, half, half, half), mode="replicate")
    found = -grown(-grown(extended)) if dark_ink else grown(-grown(-extended))
    return found[0, 0, half : half + height, half : half + width]


def ink_side(picture):
    """Whether the ink of `picture` [H, W] is darker than its paper, by the side that loses more
    when the strokes are taken away: a closing takes dark strokes away, an opening light ones (the
    paper is the side that is not thin)."""
    return bool((paper(picture, True) - picture).mean() > (picture - paper(picture, False)).mean())


def edge_pixels(image):
    """The pixels along the four edges of `image` [H, W], in one row (the corners twice)."""
    return torch.cat([image[0], image[-1], image[:, 0], image[:, -1]])


def light_border(picture):
    """Whether most of the border of `picture` [H, W] is nearer its lightest than its darkest (the
    1st and the 99th percentile): a picture's border is mostly paper, even where ink reaches it."""
    border = edge_pixels(picture)
    darkest, lightest = picture.flatten().quantile(torch.tensor([0.01, 0.99]))
    return bool(border.median() > (darkest + lightest) / 2)


def evened(picture):
    """`picture` [H, W] less the smooth light across it: a quadratic surface fitted to all of it,
    then refitted without the pixels far from it (the ink, a desk, a shadow), a few times."""
    height, width = picture.shape
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    terms = torch.stack([torch.ones_like(x), y, x, y * y, y * x, x * x], dim=-1)
    terms = terms.reshape(-1, 6).double()
    values, kept = picture.reshape(-1, 1).double(), torch.ones(height * width, dtype=torch.bool)
    for _ in range(SURFACE_FITS):
        surface = terms @ torch.linalg.lstsq(terms[kept], values[kept]).solution
        offsets = (values - surface).abs()[:, 0]
        kept = offsets <= 3 * 1.4826 * offsets.median() + HALF_GREY
    return (values - surface).reshape(height, width).float()


def ink_is_dark(picture):
    """Whether the ink of `picture` [H, W] is darker than its paper: the side to which the picture
    is skewed once the light across it is evened out (the ink is the few pixels far from the many
    of the paper). Where it is not clearly skewed (a bold digit cropped close is nearly half ink),
    two more opinions: the paper is what most of the border shows, and `ink_side`; where both say
    the other side, the ink is on it."""
    values = evened(picture)
    skew = ((values**3).mean() / (values**2).mean().clamp(min=1e-12) ** 1.5).item()
    if abs(skew) < CLEAR_SKEW:
        dark_by_border = light_border(picture)
        if dark_by_border == ink_side(picture):
            return dark_by_border
    return skew < 0


def levelled_ink(picture):
    """The ink of `picture` [H, W] in [0, 1] as its height above the paper (dark ink: the share of
    the paper's light it takes), light on black whether it was darker or lighter than the paper; and
    the paper's noise level."""
    dark_ink = ink_is_dark(picture)
    light = paper(picture, dark_ink)
    ink = (light - picture) / light.clamp(min=DARKEST_PAPER) if dark_ink else picture - light
    level = ink.median()  # most of a picture is paper
    return (ink - level).clamp(min=0), NOISE_SIGMAS * 1.4826 * (ink - level).abs().median().item()


def median_along(values, run):
    """The median of `run` values around each of `values` [H, W] along its rows (ends repeated)."""
    padded = F.pad(values[:, None], (run // 2, run // 2), mode="replicate")[:, 0]
    return padded.unfold(1, run, 1).median(-1).values


def lines_across(ink, floor):
    """The ink of the straight lines across `ink` [H, W], tilted by up to MAX_SLOPE, at each of
    their pixels (0 elsewhere). Every path of pixels along every slope whose ink, the median of
    LINE_RUN pixels along it, reaches `floor` in LINE_FRACTION of it and within LINE_END of both its
    ends is a printed line (it runs off the picture; a digit has margins). A line's own ink is the
    median along it, over a window and over its whole length, so that a stroke across it or along a
    stretch of it is not taken for it. All the slopes' paths are looked at together."""
    height, width = ink.shape
    columns = torch.arange(width)
    reach, run, long_run = max(1, round(LINE_END * width)), min(LINE_RUN, width) | 1, window(ink)
    steps = round(MAX_SLOPE * width)
    rise = ((torch.arange(-steps, steps + 1)[:, None] / width) * (columns - width / 2)).round()
    rows = (torch.arange(height)[None, :, None] + rise.long()[:, None]).reshape(-1, width)
    inside = (rows >= 0) & (rows < height)  # [slopes x H, W]: each path's pixels in the picture
    values = ink[rows.clamp(0, height - 1), columns] * inside
    lengths = inside.sum(1)
    maybe = ((values > floor).sum(1) >= LINE_FRACTION / 2 * lengths) & (lengths >= width / 2)
    rows, inside, values = rows[maybe], inside[maybe], values[maybe]  # the rest cannot be lines
    lit = (median_along(values, run) > floor) & inside

    def ends(flags):  # the first and the last column where `flags` is True, path by path
        return flags.int().argmax(1), width - 1 - flags.flip(1).int().argmax(1)

    (first, last), (start, end) = ends(lit), ends(inside)
    reaches_ends = (first - start < reach) & (end - last < reach)
    line = (lit.sum(1) >= LINE_FRACTION * inside.sum(1)) & reaches_ends
    line = line & thin_bands(maybe.nonzero()[:, 0][line], len(maybe), height)[maybe.nonzero()[:, 0]]
    found = torch.zeros(height * width)
    if line.any():
        whole = torch.where(inside, values, torch.nan)[line].nanmedian(1, keepdim=True).values
        own = torch.minimum(median_along(values[line], long_run), whole)
        on = inside[line]
        found.scatter_reduce_(0, (rows[line] * width + columns)[on], own[on], reduce="amax")
    return found.reshape(height, width)


def thin_bands(paths, count, height):
    """Which of `count` paths (slopes x `height` rows, by number) are in a band of `paths` at most
    MAX_LINE_WIDTH of the height wide: a printed line is thin, a stroke across a picture cropped
    tight to its ink is not."""
    widest = max(2, round(MAX_LINE_WIDTH * height))
    lit = torch.zeros(count)
    lit[paths] = 1.0
    bands = lit.reshape(1, -1, height)
    # The rows of each slope in a run longer than `widest`: eroded, then grown back by as much.
    inner = -F.max_pool1d(-bands, widest + 1, stride=1)
    thick = F.max_pool1d(F.pad(inner, (widest, widest)), widest + 1, stride=1)
    return (lit > 0) & (thick.reshape(-1) == 0)


def without_lines(ink, floor):
    """`ink` without ruled and grid lines, a margin or a paper's edge: lines of ink across nearly
    the whole picture. Where a stroke crosses a line, what its ink adds to the line's is kept, as
    through a filter (nothing is removed that would leave no ink)."""
    across, down = lines_across(ink, LINE_FLOOR * floor), lines_across(ink.T, LINE_FLOOR * floor).T
    line = torch.maximum(across, down)
    kept = ((ink - line) / (1 - line).clamp(min=DARKEST_PAPER)).clamp(min=0)
    return kept if (kept > floor).any() else ink


def ink_pieces(mask):
    """Each pixel of `mask` [H, W] labelled by its 8-connected piece (0 outside the mask)."""
    numbers = torch.arange(1, mask.numel() + 1, dtype=torch.float32).reshape(mask.shape)
    labels = torch.where(mask, numbers, 0.0)
    while True:  # every pixel takes the largest label around it until the pieces agree
        spread = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(spread, labels):
            return labels.long()
        labels = spread


def digit_box(ink, floor):
    """Rows and columns (top, bottom, left, right) around the ink brighter than `floor` that is not
    specks, nor pieces at the picture's border where a piece within is heavy enough to be the digit,
    or None where there is none. The pieces are told apart on a grid of at most PIECES_GRID cells a
    side (a speck within a cell of the digit joins it)."""
    mask = ink > floor
    if not mask.any():
        return None
    cell = -(-max(mask.shape) // PIECES_GRID)
    masked = (ink * mask)[None, None]
    cell_ink = F.avg_pool2d(masked, cell, ceil_mode=True, divisor_override=1)[0, 0]
    pieces = ink_pieces(cell_ink > 0)
    mass = torch.zeros(int(pieces.max()) + 1).index_add_(0, pieces.flatten(), cell_ink.flatten())
    mass[0] = 0
    touching = torch.zeros_like(mass, dtype=torch.bool)
    touching[edge_pixels(pieces)] = True
    # At the border: a desk or the paper's edge, not the digit, where a piece within is heavy.
    if (mass * ~touching).max() >= BORDER_WEIGHT * (mass * touching).max():
        mass[touching] = 0
    digit_cells = mass[pieces] >= SPECK_FRACTION * mass.max()
    digit_pixels = digit_cells.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    digit_pixels = digit_pixels[: mask.shape[0], : mask.shape[1]]
    return bounds(mask & digit_pixels)


def bounds(mask):
    """Rows and columns (top, bottom, left, right) around the True pixels of `mask` [H, W] (some).
    """
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def grown_box(ink, box, floor):
    """`box` grown to the ink brighter than `floor` within RIM pixels of it: a stroke's soft edge.
    """
    top, bottom, left, right = box
    top, left = max(0, top - RIM), max(0, left - RIM)
    near = ink[top : bottom + RIM, left : right + RIM] > floor
    near_top, near_bottom, near_left, near_right = bounds(near)
    return top + near_top, top + near_bottom, left + near_left, left + near_right


def scaled(picture, scale):
    """`picture` [H, W] resized by `scale` (antialiased), each side at least one pixel."""
    size = [max(1, round(side * scale)) for side in picture.shape]
    return TF.resize(picture[None], size, antialias=True)[0]


def shrink(gray):
    """A picture larger than WORKING_SIZE on its longer side, shrunk to it (antialiased)."""
    scale = WORKING_SIZE / max(gray.shape)
    return gray if scale >= 1 else scaled(gray, scale)


def fitted(digit):
    """`digit` [h, w] in [0, 1], cropped to its ink, as MNIST placed its digits, uint8 [28, 28]:
    scaled to fit BOX (antialiased), its ink at full brightness, centred by its mass."""
    digit = scaled(digit, BOX / max(digit.shape)).clamp(min=0)
    return centred(digit / digit.max())


def clean_background(gray):
    """The value of a picture's background where it is exactly uniform, as in a drawing made on a
    computer or MNIST's own digits: the value of every pixel of its border and of half the picture;
    else None (a photo's or a scan's paper is never one value, and lines cross a page's edge)."""
    border = edge_pixels(gray)
    uniform = bool((border == border[0]).all()) and (gray == border[0]).float().mean() >= 0.5
    return border[0] if uniform else None


def contrast(picture):
    """How many times its noise the picture's darkest and lightest differ (the 1st and the 99th
    percentile); the noise from the steps between neighbouring pixels."""
    steps = (picture[:, 1:] - picture[:, :-1]).flatten()
    noise = 1.4826 * steps.abs().median() / 2**0.5
    spread = picture.flatten().quantile(0.99) - picture.flatten().quantile(0.01)
    return (spread / noise.clamp(min=HALF_GREY)).item()


def framed(picture):
    """`picture` [H, W] in [0, 1] as an MNIST digit, uint8 [28, 28], and the digit's box in it
    (top, bottom, left, right); (None, None) where it has no ink."""
    ink, noise = levelled_ink(picture)
    floor = max(noise, HALF_GREY)
    ink = without_lines(ink, floor)
    box = digit_box(ink, max(floor, STRONG * ink.max().item()))
    if box is None:
        return None, None
    top, bottom, left, right = grown_box(ink, box, floor)
    digit = ink[top:bottom, left:right]
    if digit.max().item() - noise < max(MIN_CONTRAST, SIGNAL_TO_NOISE * noise):
        return None, None
    return fitted((digit - noise).clamp(min=0)), (top, bottom, left, right)


def edge_gaps(box, height, width, margin=0):
    """The shares of the side between a box and each edge (top, bottom, left, right) of a picture
    [height, width] that lies `margin` pixels inside the frame the box is in."""
    top, bottom, left, right = box
    return [(top - margin) / height, (height + margin - bottom) / height,
            (left - margin) / width, (width + margin - right) / width]


def with_margin(picture):
    """`picture` [H, W] with a margin of its paper around it, and the margin's width. The paper
    under the picture (its strokes taken away, those along its edge too) is carried on outwards from
    the picture's edge, so that a gradient of light goes on smoothly."""
    surface = paper(picture, ink_is_dark(picture), beyond_edge=False)
    margin = max(window(picture), round(MARGIN * max(picture.shape)))
    padded = F.pad(surface[None, None], (margin,) * 4, mode="replicate")[0, 0]
    padded[margin:-margin, margin:-margin] = picture
    return padded, margin


def frame_like_mnist(gray):
    """A picture, uint8 [H, W], as an MNIST digit, uint8 [28, 28]; None where it has no ink.
    Raises ReachesEdge for a digit whose ink reaches the picture's edge and that a margin of paper
    added around it does not frame either."""
    background = clean_background(gray)
    if background is not None:  # no paper to find: MNIST's own framing, at once
        ink = (gray.float() - background).abs() / 255
        if not ink.any():
            return None
        top, bottom, left, right = bounds(ink > 0)
        return fitted(ink[top:bottom, left:right])
    picture = shrink(gray.float() / 255)
    digit, box = framed(picture)
    if digit is None and contrast(picture) < MIN_SPREAD:
        return None
    gaps = [0.0] * 4 if digit is None else edge_gaps(box, *picture.shape)
    if min(gaps) >= EDGE_GAP:
        return digit
    # Cropped tight to its ink (none found may be one too): framed with the margin it lacks.
    padded, margin = with_margin(picture)
    digit, box = framed(padded)
    if digit is None:
        raise ReachesEdge()
    top, bottom, left, right = box
    height, width = padded.shape
    taken_margin = min(top, height - bottom, left, width - right) < margin / 2  # paper as ink
    # The ink at the picture's edge must be in the digit: else only a piece of it was framed.
    inside = edge_gaps(box, *picture.shape, margin)
    piece = any(inner > 2 * EDGE_GAP for inner, gap in zip(inside, gaps) if gap < EDGE_GAP)
    if taken_margin or piece:
        raise ReachesEdge()
    return digit


def centred(digit):
    """`digit` [h, w] in [0, 1] as uint8, pasted into a black 28x28 image and shifted by whole
    pixels so that its centre of mass lies at CENTRE (whatever falls outside is cut, as in MNIST).
    """
    # The faintest ink stays 1, not 0, so the digit keeps its 20 pixels: framed again, it is the
    # same.
    levels = torch.where(digit > 0, (digit * 255).round().clamp(min=1), 0)
    height, width = levels.shape
    mass = levels.sum()
    com_y = (levels.sum(1) * torch.arange(height)).sum() / mass
    com_x = (levels.sum(0) * torch.arange(width)).sum() / mass
    top, left = round(CENTRE - com_y.item()), round(CENTRE - com_x.item())
    side = IMAGE_SIZE + 2 * BOX  # room on every side
    canvas = torch.zeros(side, side, dtype=torch.uint8)
    canvas[BOX + top : BOX + top + height, BOX + left : BOX + left + width] = levels.to(torch.uint8)
    return canvas[BOX : BOX + IMAGE_SIZE, BOX : BOX + IMAGE_SIZE].clone()


def plain_resized(gray):
    """The whole picture resized to 28x28, inverted by the border rule: an image whose
    border is light on average (dark ink on white paper) is inverted."""
    image = TF.resize(gray[None], [IMAGE_SIZE, IMAGE_SIZE], antialias=True)[0]
    border = edge_pixels(image)
    return 255 - image if border.float().mean() > 127.5 else image


def read_picture(path, plain_resize=False):
    """The picture at `path` as an MNIST digit, uint8 [28, 28], or None if it has no ink.
    Raises NotAnImage, Unreadable or ReachesEdge."""
    gray = read_gray(path)
    return plain_resized(gray) if plain_resize else frame_like_mnist(gray)



def picture_paths(paths):
    """The files that `paths` name: files as they are, folders walked (sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            walked = (os.path.join(top, name) for top, _, names in os.walk(path) for name in names)
            files += sorted(walked)
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
    progress = tqdm(paths, desc="reading pictures", leave=False, disable=not data.progress_shown(),
                    delay=PROGRESS_DELAY)
    for path in progress:
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
        except ReachesEdge:
            data.say(f"skipped {name}: the digit reaches the picture's edge and was not framed"
                     f" (cropped tight?): give it a margin, or pass --plain-resize")
            continue
        if image is None:
            data.say(f"skipped {name}: no ink found (a blank picture?)")
            continue
        images.append(image)
        kept.append(path)
    if skipped:
        data.say(f"{folder or 'the files given'}: skipped {len(skipped)} files that are not images "
                 f"(e.g. {skipped[0]})")
    if not images:
        where = folder or " ".join(paths)
        raise data.InputError(f"{where}: no pictures with ink found (PNG, JPEG, BMP, ...)")
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
        raise data.InputError(f"--data-dir {root} has {have}/ but no {lack}/: add {lack}/, or put"
                              f" the class folders in {root} itself to keep a tenth for testing")
    if not any(present):
        images, classes = read_folder(root, plain_resize)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        num_test = max(1, round(TEST_FRACTION * len(images)))
        chosen = order[num_test:] if train else order[:num_test]
        return images[chosen], class_labels(classes, classes)[chosen]
    both = [read_folder(folder, plain_resize) for folder in folders]
    images, classes = both[0] if train else both[1]
    return images, class_labels(classes, both[0][1] + both[1][1])


def mark(script):
    """The "Software" text of the PNGs that `script` writes: how a later run knows them."""
    return f"{MAKER} {script}"


def png_bytes(picture, script):
    """A PIL image as the bytes of a PNG marked as written by `script`."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", mark(script))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def made_by(path, script):
    """Whether `path` is a PNG that `script` wrote (its "Software" text says so)."""
    try:
        with Image.open(path) as picture:
            return picture.format == "PNG" and picture.info.get("Software") == mark(script)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def check_own(paths, script):
    """An InputError naming the first of `paths` that exists but was not written by `script`:
    no script writes over a file it did not make."""
    for path in paths:
        if os.path.lexists(path) and not made_by(path, script):
            raise data.InputError(f"{path} exists and was not written by {script} (its PNGs say so"
                                  f" in their Software text): move it, or pick another --out-dir")


def lies_in(path, folder):
    """Whether `path` is `folder` or lies inside it."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_out_dir(out_dir, paths, flag="PATH"):
    """An InputError if `out_dir` is among the pictures that `paths` (given as `flag`) name: a
    folder named or one in it, or the folder of a file named. They would be read back next time."""
    for path in paths:
        if os.path.isdir(path):
            among = lies_in(out_dir, path)
        else:
            among = os.path.realpath(out_dir) == os.path.realpath(os.path.dirname(path) or ".")
        if among:
            raise data.InputError(f"--out-dir {out_dir} is among the pictures read ({flag} {path}):"
                                  f" what is written there would be read as yours; pass another")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("paths", nargs="+", metavar="PATH", help="pictures, or folders searched for them")
    add("--out-dir", required=True, help="where each framed digit goes, as <name>.png")
    add("--overwrite", action="store_true", help="write over PNGs that pictures.py wrote before")
    add("--plain-resize", action="store_true", help="resize whole pictures instead of framing")
    return parser.parse_args(argv)


def main(argv=()):
    """Frame pictures as `python pictures.py ARGS` does: `argv` is the list of ARGS. Each
    picture's digit goes to <out-dir>/<its name>.png, 28x28 8-bit grey, light ink on black, marked
    as pictures.py's. Nothing is written over but what pictures.py wrote, and that only with
    --overwrite; nothing if two names collide. Returns the exit status: 0 done, 2 a mistake in the
    flags or files, 4 a file that cannot be written, 128 plus the signal's number when stopped."""
    try:
        args = parse_args(argv)
    except SystemExit as exit:  # argparse has printed the usage and the mistake, or the help
        return exit.code
    with data.script_run():
        try:
            check_out_dir(args.out_dir, args.paths)
            images, paths = read_pictures(picture_paths(args.paths), args.plain_resize)
            names = [os.path.splitext(os.path.basename(path))[0] + ".png" for path in paths]
            targets = [os.path.join(args.out_dir, name) for name in names]
            first = {}
            for target, path in zip(targets, paths):
                if target in first:
                    raise data.InputError(f"{first[target]} and {path} would both be {target}:"
                                          f" rename one")
                first[target] = path
            check_own(targets, SCRIPT)
            existing = [target for target in targets if os.path.exists(target)]
            if existing and not args.overwrite:
                raise data.InputError(f"{existing[0]} exists: pass --overwrite to write over it,"
                                      f" or another --out-dir")
            try:
                os.makedirs(args.out_dir, exist_ok=True)
            except OSError as error:
                raise data.CannotWrite(f"cannot make --out-dir {args.out_dir}:"
                                       f" {error.strerror}") from None
            for image, path, target in zip(images, paths, targets):
                data.atomic_write(target, png_bytes(Image.fromarray(image.numpy()), SCRIPT))
                data.say(f"{path} -> {target}")
        except data.InputError as error:
            return data.fail(error)
        except data.CannotWrite as error:
            return data.fail(error, data.EXIT_CANNOT_WRITE)
        except data.Interrupted as stop:
            return data.fail(f"stopped by {data.stop_name(stop.args[0])}", 128 + stop.args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
