"""How fast pictures.py reads and frames pictures: MNIST's test digits exported as 28x28 PNGs (as
a folder of MNIST, EMNIST or a class's own set arrives), and one 12-megapixel phone photo.

    python results/own-digits/read_speed.py --data-dir ../shared/data [--count 10000]

Prints the pictures framed a second (reading the files included), how many come out as MNIST's
own framing bit for bit; then the wall seconds and the peak memory of `python pictures.py` framing
the photo, as a process of its own (start-up included).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import data  # noqa: E402
import pictures  # noqa: E402

# Runs a script, then prints its peak memory in kB (Linux): VmHWM counts this process alone, where
# getrusage would count the memory of the process that started it, as it was at the start.
PEAK_AFTER = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""


def phone_photo(path):
    """A 4000x3000 JPEG of a dark ring drawn on unevenly lit, noisy paper."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3000, 0:4000]
    page = 0.85 + 0.1 * x / 4000 - 0.05 * y / 3000 + 0.02 * rng.standard_normal((3000, 4000))
    ring = np.hypot(x - 2000, y - 1500)
    page[(ring > 500) & (ring < 650)] *= 0.2
    grey = (np.clip(page, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path, quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--count", type=int, default=10000, help="digits (default: 10000)")
    args = parser.parse_args()
    digits = data.load_split(args.data_dir, train=False)[0][: args.count]
    with tempfile.TemporaryDirectory() as folder:
        for index, digit in enumerate(digits):
            Image.fromarray(digit.numpy()).save(os.path.join(folder, f"{index:05d}.png"))
        started = time.perf_counter()
        images, kept = pictures.read_pictures(pictures.picture_paths([folder]))
        seconds = time.perf_counter() - started
        originals = digits[[int(os.path.basename(path)[:5]) for path in kept]]
        same = (images == originals).flatten(1).all(1).float().mean().item()
        print(f"{len(digits)} 28x28 PNGs: {len(digits) / seconds:.0f} a second, {len(kept)} framed,"
              f" {same:.1%} of them bit for bit as MNIST's own")
        photo = os.path.join(folder, "photo.jpg")
        phone_photo(photo)
        script = os.path.join(os.path.dirname(pictures.__file__), "pictures.py")
        started = time.perf_counter()
        command = [sys.executable, "-c", PEAK_AFTER, script, photo, "--out-dir",
                   os.path.join(folder, "framed")]
        framing = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    peak = int(framing.stdout.split()[-1]) / 1024
    print(f"a 12-megapixel JPEG through pictures.py: {seconds:.1f} s as a process (exit status"
          f" {framing.returncode}), its peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
