"""Pictures of digits that are not MNIST's, as users bring them, for measuring the framing.

    pip install scikit-learn   # its 1,797 handwritten digits ship inside the package
    python results/own-digits/make_pictures.py OUT_DIR --data-dir ../shared/data

writes into OUT_DIR, each a folder of class subfolders 0/ ... 9/:
  light-on-dark/  scikit-learn's digits (UCI optdigits: 43 other writers, another
                  scanner, 8x8 at 17 grey levels) upscaled to 28x28, light ink on black
  scanned/        the same digits dark on white paper, RGB, 64x64, every other one JPEG
  photographed/   the same digits as dark ink on a photographed page: 48-80 pixels tall,
                  off-centre on 320x240, a brightness gradient, sensor noise, JPEG
  mnist-test/     MNIST's 10,000 test digits as PNGs, as they are
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import data  # noqa: E402

SEED = 0


def upscaled(digit, size):
    """An 8x8 digit with values 0-16 as float [size, size] in [0, 1], bicubic."""
    image = torch.tensor(digit, dtype=torch.float32)[None, None] / 16
    return F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1)


def save(image, path, mode="L", quality=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    picture = Image.fromarray((image.clamp(0, 1) * 255).round().byte().numpy(), mode="L").convert(mode)
    picture.save(path, **({"quality": quality} if quality else {}))


def photographed(digit, generator):
    """Dark ink on a page 320x240: the digit 48-80 pixels tall somewhere off-centre, light
    falling off from one side to the other, sensor noise."""
    size = int(torch.randint(48, 81, (), generator=generator))
    ink = upscaled(digit, size)
    top = int(torch.randint(0, 240 - size, (), generator=generator))
    left = int(torch.randint(0, 320 - size, (), generator=generator))
    y, x = torch.meshgrid(torch.linspace(0, 1, 240), torch.linspace(0, 1, 320), indexing="ij")
    tilt = torch.rand(2, generator=generator) - 0.5
    page = 0.75 + 0.25 * tilt[0] * (2 * x - 1) + 0.25 * tilt[1] * (2 * y - 1)
    page[top : top + size, left : left + size] *= 1 - 0.85 * ink
    return page + 0.03 * torch.randn(page.shape, generator=generator)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    digits = load_digits()
    generator = torch.Generator().manual_seed(SEED)
    for index, (digit, label) in enumerate(zip(digits.images, digits.target)):
        name = f"{label}/{index:04d}"
        save(upscaled(digit, 28), os.path.join(args.out_dir, "light-on-dark", f"{name}.png"))
        extension = "jpg" if index % 2 else "png"
        save(1 - upscaled(digit, 64), os.path.join(args.out_dir, "scanned", f"{name}.{extension}"), "RGB",
             quality=90 if index % 2 else None)
        save(photographed(digit, generator), os.path.join(args.out_dir, "photographed", f"{name}.jpg"), quality=80)
    images, labels = data.load_split(args.data_dir, train=False)
    for index, (image, label) in enumerate(zip(images, labels.tolist())):
        path = os.path.join(args.out_dir, "mnist-test", str(label), f"{index:05d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.asarray(image), mode="L").save(path)
    print(f"wrote {len(digits.images)} digits in three styles and {len(images)} MNIST test digits into {args.out_dir}")


if __name__ == "__main__":
    main()
