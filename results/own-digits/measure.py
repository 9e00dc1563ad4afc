"""How well pictures.py frames each style of make_pictures.py, and what the shipped model makes of
it.

    python results/own-digits/measure.py PICTURES_DIR [--model MODEL.pt] [--sheet S.png]

The framing error of a picture is the MSE (pixels in [0, 1]) between its framed digit and the
framing of the same strokes drawn clean (MNIST's own: crop to the ink, fit 20x20, centre of mass at
(14, 14)), the least over shifts of up to one pixel either way; a picture framed as blank counts as
1. Prints, per style: the median framing error, the share within 0.02, and the model's test MSE on
the framed digits (the model: results/mnist/autoencoder.pt unless --model). --sheet draws a few
originals of each style beside their framed digits and reconstructions.
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import data  # noqa: E402
import pictures  # noqa: E402
from model import load_checkpoint, per_image_mse  # noqa: E402

SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
WITHIN = 0.02
SHEET_PER_STYLE = 4
TILE = 84  # pixels a side of each picture on the sheet


def framing_error(framed, reference):
    """The least MSE between `framed` and `reference` (uint8 [28, 28]) over shifts of one pixel."""
    if framed is None:
        return 1.0
    padded = F.pad(framed.float()[None] / 255, (1, 1, 1, 1))[0]
    target = reference.float() / 255
    return min(
        ((padded[1 + dy : 29 + dy, 1 + dx : 29 + dx] - target) ** 2).mean().item()
        for dy, dx in SHIFTS
    )


def mnist_framing(path):
    """MNIST's own framing of a clean digit (light ink on black) at `path`: cropped to its ink,
    scaled to fit 20x20 (antialiased), its centre of mass shifted to (14, 14): no paper to find, no
    sign to guess."""
    clean = pictures.read_gray(path).float() / 255
    top, bottom, left, right = pictures.bounds(clean > 0)
    return pictures.fitted(clean[top:bottom, left:right])


def framed_or_refused(path):
    """The framed digit of the picture at `path` (None if blank), or "refused" where pictures.py
    says the digit reaches the picture's edge and skips it with a hint."""
    try:
        return pictures.read_picture(path)
    except pictures.ReachesEdge:
        return "refused"


def style_files(root, style):
    return sorted(
        os.path.relpath(path, os.path.join(root, style))
        for path in pictures.picture_paths([os.path.join(root, style)])
    )


def thumbnail(path):
    """A picture as grey [1, TILE, TILE] for the sheet, whole and squeezed."""
    with Image.open(path) as picture:
        return data.to_float(
            torch.from_numpy(np.array(picture.convert("L").resize((TILE, TILE))))[None]
        )[0]


def enlarged(digit):
    return F.interpolate(digit[None], size=(TILE, TILE), mode="nearest")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pictures_dir")
    parser.add_argument("--model", default="results/mnist/autoencoder.pt")
    parser.add_argument(
        "--sheet", help="a PNG of a few originals, framed digits and reconstructions per style"
    )
    args = parser.parse_args()
    model, _ = load_checkpoint(args.model)
    model.eval()
    root, rows = args.pictures_dir, []
    print("style     pictures  median framing error  within 0.02  refused  model test_mse")
    for style in sorted(name for name in os.listdir(root) if not name.endswith("-clean")):
        names = style_files(root, style)
        outcomes = [framed_or_refused(os.path.join(root, style, name)) for name in names]
        refused = outcomes.count("refused") / len(outcomes)
        framed = [None if outcome == "refused" else outcome for outcome in outcomes]
        clean = [
            mnist_framing(os.path.join(root, f"{style}-clean", os.path.splitext(name)[0] + ".png"))
            for name in names
        ]
        errors = torch.tensor([framing_error(f, c) for f, c in zip(framed, clean)])
        found = torch.stack([f for f in framed if f is not None])
        mse = per_image_mse(model, found).mean().item()
        median, within = errors.median().item(), (errors <= WITHIN).float().mean()
        print(f"{style:<9} {len(names):8d}  {median:20.4f}  {within:10.1%}  {refused:6.1%}"
              f"  {mse:14.7f}")
        found_at = [i for i, f in enumerate(framed) if f is not None]
        chosen = found_at[:: max(1, len(found_at) // SHEET_PER_STYLE)][
            :SHEET_PER_STYLE
        ]  # digits of every kind
        digits = data.to_float(torch.stack([framed[i] for i in chosen]))
        with torch.no_grad():
            rebuilt = model(digits)[0].clamp(0, 1)
        for i, digit, again in zip(chosen, digits, rebuilt):
            rows += [
                thumbnail(os.path.join(root, style, names[i])),
                enlarged(digit),
                enlarged(again),
            ]
    if args.sheet:
        sheet = make_grid(torch.stack(rows), nrow=3 * SHEET_PER_STYLE, padding=2, pad_value=1.0)
        data.atomic_write(args.sheet, pictures.png_bytes(to_pil_image(sheet), "measure.py"))


if __name__ == "__main__":
    main()
