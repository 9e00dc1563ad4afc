"""Draw what a trained autoencoder does.

    python visualize.py --checkpoint best.pt --out-dir images

writes into --out-dir:
  reconstructions.png   the first 32 test digits (top) and their reconstructions (bottom)
  homotopy_1..3.png     decoded straight lines between the codes of two test digits
  curves.png            learning rate, train and test loss per epoch, both stages

The curves come from the history.csv beside the checkpoint, or from the files named by
--history (several are overlaid, e.g. this repo's run against the reference's).
"""

import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

import data  # noqa: E402
from model import CheckpointError, load_checkpoint  # noqa: E402
from train import choose_device, UsageError  # noqa: E402

NUM_RECONSTRUCTIONS = 32
# Test-set indices of the digit pairs to morph: 7 -> 2, 1 -> 0, 4 -> 1.
HOMOTOPY_PAIRS = [(0, 1), (2, 3), (4, 5)]
HOMOTOPY_STEPS = 10  # images strictly between the two ends
GRID_PADDING = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--dataset", choices=sorted(data.DATASETS), default="mnist")
    parser.add_argument("--out-dir", default="images")
    parser.add_argument("--history", nargs="+", metavar="CSV", default=None,
                        help="history files to plot (default: history.csv beside the checkpoint)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu")
    return parser.parse_args(argv)


def decode(model, latent):
    with torch.inference_mode():
        return model.decoder(latent).clamp(0, 1)


def encode(model, images):
    with torch.inference_mode():
        return model.encoder(images)


def save_rows(rows, path):
    """Save equally long rows of [1, 28, 28] images as one picture, one row under another."""
    images = torch.cat(rows)
    save_image(make_grid(images, nrow=len(rows[0]), padding=GRID_PADDING, pad_value=1.0), path)


def draw_reconstructions(model, test_images, path):
    originals = data.to_float(test_images[:NUM_RECONSTRUCTIONS])
    with torch.inference_mode():
        reconstructions = model(originals)[0].clamp(0, 1)
    save_rows([originals, reconstructions], path)


def draw_homotopy(model, test_images, first, second, path):
    """Top row: decoded codes from `first` to `second`; bottom: the originals under the ends."""
    ends = data.to_float(test_images[[first, second]])
    start, end = encode(model, ends)
    weights = torch.linspace(0, 1, HOMOTOPY_STEPS + 2, device=start.device)[:, None]
    morph = decode(model, torch.lerp(start, end, weights))
    originals = torch.zeros_like(morph)
    originals[0], originals[-1] = ends[0], ends[1]
    save_rows([morph, originals], path)


def read_curves(path):
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ValueError("it has no rows")
    return {key: [float(row[key]) for row in rows] for key in ("stage", "train_loss", "test_loss", "lr")}


def draw_curves(history_paths, path):
    """Learning rate, train loss and test loss against epochs counted across both stages."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for history_path in history_paths:
        curves = read_curves(history_path)
        epochs = range(1, len(curves["lr"]) + 1)
        label = os.path.relpath(history_path)
        for axis, key in zip(axes, ("lr", "train_loss", "test_loss")):
            axis.plot(epochs, curves[key], label=label)
        if 2 in curves["stage"]:
            stage_two_start = curves["stage"].index(2) + 0.5
            for axis in axes:
                axis.axvline(stage_two_start, color="grey", linestyle=":", linewidth=1)
    for axis, title in zip(axes, ("learning rate", "train loss (MSE)", "test loss (MSE)")):
        axis.set_title(title)
        axis.set_xlabel("epoch (stage 1, then stage 2)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize="small")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    try:
        device = choose_device(args.device)
        model, _ = load_checkpoint(args.checkpoint, device)
        test_images, _ = data.load_split(args.data_dir, train=False, dataset=args.dataset)
        os.makedirs(args.out_dir, exist_ok=True)
    except (UsageError, CheckpointError, data.DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model.eval()
    test_images = test_images.to(device)
    written = []

    def out(name):
        written.append(os.path.join(args.out_dir, name))
        return written[-1]

    draw_reconstructions(model, test_images, out("reconstructions.png"))
    for number, (first, second) in enumerate(HOMOTOPY_PAIRS, start=1):
        draw_homotopy(model, test_images, first, second, out(f"homotopy_{number}.png"))

    history_paths = args.history or [os.path.join(os.path.dirname(args.checkpoint), "history.csv")]
    try:
        draw_curves(history_paths, os.path.join(args.out_dir, "curves.png"))
        written.append(os.path.join(args.out_dir, "curves.png"))
    except (OSError, ValueError, KeyError) as error:
        print(f"skipped curves.png: cannot read the history {', '.join(history_paths)} ({error})",
              file=sys.stderr)
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
