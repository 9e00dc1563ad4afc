"""Digits as users bring them, each also drawn clean (light ink on black), to measure the framing.

    python results/own-digits/make_pictures.py OUT_DIR --data-dir ./data [--count 200]

MNIST test digits (not seen in training) are drawn large with smooth strokes in each style, into
OUT_DIR/<style>/<digit>/<index>.<png|jpg>, and the same strokes clean, light ink on black as MNIST's
digits were before their framing, into OUT_DIR/<style>-clean/<digit>/<index>.png:
  squared/  blue-black pen on 5 mm squared paper, photographed: tilted, unevenly lit, blurred, JPEG
  ruled/    black pen on ruled paper with a red margin, scanned: RGB PNG
  marker/   a thick marker on a page with a shadow across it, photographed, JPEG
  desk/     pen on a page lying on a desk that shows along the picture's border, tilted, JPEG
  chalk/    light ink on a dark board, noisy, PNG
  tight/    pen or marker on paper, the photo cropped to the digit's ink (no margin), JPEG
  pencil/   a faint pencil on white paper, 10% darker than it and 20 times its noise, scanned, PNG
The last two styles draw from a random stream of their own, so the first five stay as they were.
"""

import argparse
import io
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import data  # noqa: E402

STYLES = ["squared", "ruled", "marker", "desk", "chalk", "tight", "pencil"]
OWN_STREAM = {"tight", "pencil"}  # styles drawn from a second random stream
PAPER, PEN, BLUE_BLACK = (0.93, 0.93, 0.9), (0.08, 0.08, 0.08), (0.1, 0.14, 0.32)
GRID_BLUE, MARGIN_RED = (0.62, 0.72, 0.88), (0.86, 0.3, 0.3)
MARKER = 1 / 40  # how much a marker thickens a stroke, as a share of the digit's size
KEPT = 0.8  # the share of the page's side that a photo of it keeps, enlarged to the page's size


def ink(digit, size, thicken=0.0):
    """An MNIST digit as ink coverage [size, size] in [0, 1], smooth strokes (bicubic), optionally
    thicker."""
    image = F.interpolate(
        digit[None, None].float() / 255, size=(size, size), mode="bicubic", align_corners=False
    )
    if thicken:  # a share of the size: the same stroke at any size
        reach = max(1, round(thicken * size))
        image = F.max_pool2d(image, 2 * reach + 1, stride=1, padding=reach)
    return image[0, 0].clamp(0, 1)


def paint(page, coverage, colour, top, left):
    """Lay ink of `colour` on an RGB page [3, H, W] where `coverage` [h, w] says, at (top, left)."""
    h, w = coverage.shape
    region = page[:, top : top + h, left : left + w]
    page[:, top : top + h, left : left + w] = (
        region * (1 - coverage) + torch.tensor(colour)[:, None, None] * coverage
    )


def lines(page, spacing, width, colour, offset, vertical=False):
    """Ruled lines across the whole page, `width` pixels wide, every `spacing` pixels from
    `offset`."""
    extent = page.shape[2] if vertical else page.shape[1]
    mask = torch.zeros(extent)
    for start in np.arange(offset, extent, spacing):
        mask[int(start) : int(start) + width] = 1
    coverage = (
        mask[None, :].expand(page.shape[1], -1)
        if vertical
        else mask[:, None].expand(-1, page.shape[2])
    )
    paint(page, coverage, colour, 0, 0)


def photographed(page, rng, tilt=4.0, blur=1.2):
    """Tilted, lit unevenly from one side, blurred, with sensor noise: the middle 80% of the page
    kept, as a photo of it (so that what the tilt brings in from outside the page stays out)."""
    angle = math.radians(rng.uniform(-tilt, tilt))
    theta = (
        KEPT
        * torch.tensor(
            [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0]]
        )[None]
    )
    grid = F.affine_grid(theta.float(), [1, 3, *page.shape[1:]], align_corners=False)
    page = F.grid_sample(page[None], grid, padding_mode="border", align_corners=False)[0]
    y, x = torch.meshgrid(
        torch.linspace(-1, 1, page.shape[1]), torch.linspace(-1, 1, page.shape[2]), indexing="ij"
    )
    direction = rng.uniform(0, 2 * math.pi)
    light = 0.82 + 0.16 * (math.cos(direction) * x + math.sin(direction) * y) - 0.08 * (x**2 + y**2)
    page = page * light
    sigma = rng.uniform(0.5, blur)
    kernel = torch.exp(-(torch.arange(-3, 4).float() ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).expand(3, 1, 1, 7)
    page = F.conv2d(
        F.conv2d(page[None], kernel, padding=(0, 3), groups=3),
        kernel.transpose(2, 3),
        padding=(3, 0),
        groups=3,
    )[0]
    return page + 0.02 * torch.from_numpy(rng.standard_normal(page.shape)).float()


def squared(digit, rng):
    page = torch.tensor(PAPER)[:, None, None].repeat(1, 480, 640)
    cell = int(rng.integers(26, 36))
    lines(page, cell, 2, GRID_BLUE, rng.integers(0, cell))
    lines(page, cell, 2, GRID_BLUE, rng.integers(0, cell), vertical=True)
    size = int(cell * rng.uniform(2.5, 3.5))
    paint(
        page,
        ink(digit, size),
        BLUE_BLACK,
        240 - size // 2 + int(rng.integers(-40, 40)),
        320 - size // 2 + int(rng.integers(-60, 60)),
    )
    return photographed(page, rng)


def ruled(digit, rng):
    page = torch.full((3, 260, 220), 0.98)
    spacing = int(rng.integers(30, 38))
    lines(page, spacing, 2, GRID_BLUE, rng.integers(0, spacing))
    margin = int(rng.integers(15, 40))
    lines(page, 1000, 3, MARGIN_RED, margin, vertical=True)
    size = int(spacing * rng.uniform(1.6, 2.2))
    paint(
        page,
        ink(digit, size),
        PEN,
        130 - size // 2 + int(rng.integers(-20, 20)),
        margin + 10 + int(rng.integers(0, 200 - margin - size)),
    )
    return page + 0.01 * torch.from_numpy(rng.standard_normal(page.shape)).float()


def marker(digit, rng):
    page = torch.tensor(PAPER)[:, None, None].repeat(1, 360, 480)
    size = int(rng.integers(160, 260))
    paint(
        page,
        ink(digit, size, thicken=MARKER),
        PEN,
        180 - size // 2 + int(rng.integers(-30, 30)),
        240 - size // 2 + int(rng.integers(-60, 60)),
    )
    y, x = torch.meshgrid(torch.arange(360.0), torch.arange(480.0), indexing="ij")
    direction, through = rng.uniform(0, 2 * math.pi), rng.uniform(-80, 80)
    distance = (x - 240) * math.cos(direction) + (y - 180) * math.sin(direction) - through
    shade = 1 - rng.uniform(0.35, 0.55) * torch.sigmoid(
        distance / rng.uniform(2, 12)
    )  # a soft shadow edge
    return photographed(page * shade, rng, tilt=2.0)


def desk(digit, rng):
    height, width = 480, 640
    wood = torch.tensor([0.42, 0.29, 0.18])[:, None, None] * (
        1
        + 0.12 * torch.sin(torch.arange(width) / rng.uniform(4, 9))[None, None, :]
        + 0.05 * torch.from_numpy(rng.standard_normal((1, height, width))).float()
    )
    page = torch.tensor(PAPER)[:, None, None].repeat(1, height, width)
    size = int(rng.integers(90, 140))
    paint(
        page,
        ink(digit, size),
        BLUE_BLACK,
        240 - size // 2 + int(rng.integers(-30, 30)),
        320 - size // 2 + int(rng.integers(-40, 40)),
    )
    left, right = int(rng.integers(0, 90)), int(rng.integers(0, 90))
    top, bottom = int(rng.integers(0, 70)), int(rng.integers(0, 70))
    if max(left, right, top, bottom) < 25:  # the desk shows along at least one side
        left = 60
    paper = torch.zeros(1, height, width)
    paper[:, top : height - bottom, left : width - right] = 1
    return photographed(page * paper + wood * (1 - paper), rng, tilt=5.0)


def chalk(digit, rng):
    page = torch.tensor([0.16, 0.2, 0.17])[:, None, None].repeat(1, 300, 300)
    size = int(rng.integers(120, 220))
    paint(
        page,
        0.9 * ink(digit, size),
        (0.92, 0.92, 0.9),
        150 - size // 2 + int(rng.integers(-30, 30)),
        150 - size // 2 + int(rng.integers(-30, 30)),
    )
    return page + 0.04 * torch.from_numpy(rng.standard_normal(page.shape)).float()


def tight(digit, rng, thicken=0.0):
    """Pen (or marker) on paper, photographed, then cropped to the ink: the strokes touch all four
    edges of the picture."""
    size = int(rng.integers(80, 240))
    coverage = ink(digit, size, thicken=thicken)
    page = torch.tensor(PAPER)[:, None, None].repeat(1, size + 80, size + 80)
    paint(page, coverage, PEN if thicken else BLUE_BLACK, 40, 40)
    page = photographed(page, rng, tilt=0.0)
    # The photo enlarges the page about its centre: the ink's box, on the page at 40, grows with it.
    centre = (size + 80) / 2
    rows, cols = (coverage > 0.2).any(1).nonzero()[:, 0], (coverage > 0.2).any(0).nonzero()[:, 0]
    top, bottom, left, right = (
        round(centre + (40 + edge + 0.5 - centre) / KEPT - 0.5)
        for edge in (rows[0].item(), rows[-1].item(), cols[0].item(), cols[-1].item())
    )
    return page[:, top : bottom + 1, left : right + 1]


def pencil(digit, rng):
    """Graphite: ink 10% darker than the paper at its darkest, the paper's noise a twentieth of
    that, on a scanned page."""
    page = torch.full((1, 300, 260), 0.9)
    size = int(rng.integers(100, 180))
    paint(page, 0.1 * ink(digit, size), (0.0,), 150 - size // 2 + int(rng.integers(-40, 40)),
          130 - size // 2 + int(rng.integers(-30, 30)))
    return (page + 0.1 * 0.9 / 20 * torch.from_numpy(rng.standard_normal(page.shape)).float())[0]


def save(page, path):
    """A page in [0, 1] (grey [H, W] or RGB [3, H, W]) as a PNG or JPEG file, written whole."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = (page.clamp(0, 1) * 255).round().byte()
    picture = (
        Image.fromarray(array.numpy(), "L")
        if array.dim() == 2
        else Image.fromarray(array.permute(1, 2, 0).numpy(), "RGB")
    )
    buffer = io.BytesIO()
    if path.endswith(".jpg"):
        picture.save(buffer, "JPEG", quality=80)
    else:
        picture.save(buffer, "PNG")
    data.atomic_write(path, buffer.getvalue())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument(
        "--count", type=int, default=200, help="digits in each style (default: 200)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, labels = data.load_split(args.data_dir, train=False)
    rng = np.random.default_rng(args.seed)
    own_rng = np.random.default_rng([args.seed, 1])
    chosen = rng.choice(len(images), args.count, replace=False)
    for index in chosen.tolist():
        name = f"{labels[index]}/{index:05d}"
        for style in STYLES:
            extension = "png" if style in ("ruled", "chalk", "pencil") else "jpg"
            # The marker, and every other tight crop, draws thicker strokes.
            thick = style == "marker" or (style == "tight" and index % 2 == 0)
            if style == "tight":
                picture = tight(images[index], own_rng, thicken=MARKER if thick else 0.0)
            else:
                picture = globals()[style](images[index], own_rng if style in OWN_STREAM else rng)
            save(picture, os.path.join(args.out_dir, style, f"{name}.{extension}"))
            clean = ink(images[index], 112, thicken=MARKER if thick else 0)
            save(clean, os.path.join(args.out_dir, f"{style}-clean", f"{name}.png"))
    print(f"wrote {args.count} digits, clean and in {len(STYLES)} styles, into {args.out_dir}")


if __name__ == "__main__":
    main()
