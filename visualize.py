"""Draw what a trained autoencoder does.

    python visualize.py --checkpoint best.pt --out-dir images

writes into --out-dir:
  reconstructions.png   the first 32 test digits (top) and their reconstructions (bottom)
  homotopy_1..3.png     decoded straight lines between the codes of two test digits
  curves.png            learning rate, train and test loss per epoch, both stages
  latent_pca.png        the test codes projected on their first two principal components
  per_digit_error.png   test MSE of each digit
  worst.png             the 16 worst-reconstructed test digits (top) and their reconstructions
  samples.png           32 new digits decoded from a Gaussian fitted to the training codes
  interpolation_grid.png  a 10x10 grid decoded between the codes of four test digits at the corners

The curves come from the history.csv beside the checkpoint, or from the files named by
--history (several are overlaid, e.g. this repo's run against the reference's).

    python visualize.py --checkpoint best.pt --images photo.jpg my-digits/

writes only pictures.png: each of your pictures, framed as MNIST frames its digits, above
its reconstruction.
"""

import argparse
import csv
import os
import sys
from functools import partial

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

import data  # noqa: E402
from data import say  # noqa: E402
from evaluate import CLASS_WORDS, is_labelled, latent_codes  # noqa: E402
from model import CheckpointError, load_checkpoint  # noqa: E402
from train import per_image_mse  # noqa: E402

NUM_RECONSTRUCTIONS = 32
# Test-set indices of the digit pairs to morph: 7 -> 2, 1 -> 0, 4 -> 1.
HOMOTOPY_PAIRS = [(0, 1), (2, 3), (4, 5)]
HOMOTOPY_STEPS = 10  # images strictly between the two ends
GRID_PADDING = 2
NUM_WORST = 16
NUM_SAMPLES = 32
SAMPLE_SEED = 0
# Test-set indices of the four corner digits of the interpolation grid: 7, 2, 1, 0.
GRID_CORNERS = (0, 1, 2, 3)
GRID_SIDE = 10
CURVES = ("stage", "train_loss", "test_loss", "lr")  # the columns of history.csv that are drawn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="best.pt", help="model to draw (default: %(default)s)")
    data.add_arguments(parser)
    parser.add_argument("--out-dir", default="images", help="where the PNGs go (default: %(default)s)")
    parser.add_argument("--history", nargs="+", metavar="CSV", default=None,
                        help="history files to plot (default: history.csv beside the checkpoint)")
    parser.add_argument("--images", nargs="+", metavar="PATH",
                        help="pictures of your own, files or folders: only pictures.png, each picture framed as an "
                             "MNIST digit above its reconstruction")
    parser.add_argument("--labels", nargs="+", metavar="NAME", default=None,
                        help="the curves' names in the legend, one per --history file (default: each file's folder)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.history or [None]):
        parser.error(f"--labels names {len(args.labels)} curves, --history gives {len(args.history or [None])}")
    out_dir, data_dir = os.path.abspath(args.out_dir), os.path.abspath(args.data_dir)
    if args.dataset == "images" and not args.images and os.path.commonpath([out_dir, data_dir]) == data_dir:
        parser.error(f"--out-dir {args.out_dir} lies in --data-dir {args.data_dir}: the PNGs would be read as your "
                     f"pictures next time; pass another --out-dir")
    return args


def decode(model, latent):
    with torch.inference_mode():
        return model.decoder(latent).clamp(0, 1)


def save_rows(rows, path):
    """Save equally long rows of [1, 28, 28] images as one picture, one row under another."""
    images = torch.cat(rows)
    save_image(make_grid(images, nrow=len(rows[0]), padding=GRID_PADDING, pad_value=1.0), path)


def draw_reconstructions(model, images, path):
    """`images` (uint8) in rows of at most NUM_RECONSTRUCTIONS, each row above a row of
    their reconstructions; a short last row is filled with white."""
    originals = data.to_float(images)
    with torch.inference_mode():
        reconstructions = model(originals)[0].clamp(0, 1)
    width = min(len(images), NUM_RECONSTRUCTIONS)
    rows = []
    for start in range(0, len(images), width):
        for row in (originals[start : start + width], reconstructions[start : start + width]):
            rows.append(torch.cat([row, row.new_ones(width - len(row), *row.shape[1:])]))
    save_rows(rows, path)


def draw_homotopy(model, test_images, first, second, path):
    """Top row: decoded codes from `first` to `second`; bottom: the originals under the ends."""
    ends = data.to_float(test_images[[first, second]])
    start, end = latent_codes(model, test_images[[first, second]])
    weights = torch.linspace(0, 1, HOMOTOPY_STEPS + 2, device=start.device)[:, None]
    morph = decode(model, torch.lerp(start, end, weights))
    originals = torch.zeros_like(morph)
    originals[0], originals[-1] = ends[0], ends[1]
    save_rows([morph, originals], path)


def draw_latent_pca(test_codes, test_labels, label_name, path):
    """The test codes on their first two principal components, one colour per digit."""
    codes = test_codes.float().cpu()
    _, _, components = torch.pca_lowrank(codes, q=2, center=True)
    projected = (codes - codes.mean(dim=0)) @ components[:, :2]
    labels = test_labels.cpu()
    figure, axis = plt.subplots(figsize=(8, 7), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for digit in range(int(labels.max()) + 1):
        chosen = labels == digit
        axis.scatter(projected[chosen, 0], projected[chosen, 1], s=3, alpha=0.5, color=colours(digit),
                     label=str(digit))
    axis.set_title(f"{len(codes):,} test codes, first two principal components")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.legend(title=label_name, markerscale=4, loc="best")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_per_digit_error(errors, test_labels, label_name, path):
    labels = test_labels.cpu()
    num_classes = int(labels.max()) + 1
    means = [errors[labels == digit].mean().item() for digit in range(num_classes)]
    figure, axis = plt.subplots(figsize=(7, 4), constrained_layout=True)
    axis.bar(range(num_classes), means, color="tab:blue")
    axis.axhline(errors.mean().item(), color="grey", linestyle="--", label="all test images")
    axis.set_xticks(range(num_classes))
    axis.set_xlabel(label_name)
    axis.set_ylabel("test MSE")
    axis.set_title(f"Reconstruction error per {label_name}")
    axis.legend()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_samples(model, train_codes, path):
    """Decode codes drawn from N(mean, covariance) of the training codes."""
    codes = train_codes.cpu().double()
    mean, covariance = codes.mean(dim=0), torch.cov(codes.T)
    # A touch of jitter keeps the covariance positive definite for the Cholesky factor.
    covariance += 1e-6 * covariance.diagonal().mean() * torch.eye(len(mean), dtype=codes.dtype)
    gaussian = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
    torch.manual_seed(SAMPLE_SEED)
    drawn = gaussian.sample((NUM_SAMPLES,)).float().to(train_codes.device)
    save_image(make_grid(decode(model, drawn), nrow=NUM_SAMPLES // 4, padding=GRID_PADDING, pad_value=1.0), path)


def draw_interpolation_grid(model, test_images, path):
    """Bilinear interpolation between four codes at the corners of a square."""
    corners = latent_codes(model, test_images[list(GRID_CORNERS)])
    top_left, top_right, bottom_left, bottom_right = corners
    steps = torch.linspace(0, 1, GRID_SIDE, device=corners.device)
    down, across = steps[:, None, None], steps[None, :, None]
    top = torch.lerp(top_left, top_right, across)
    bottom = torch.lerp(bottom_left, bottom_right, across)
    grid_codes = torch.lerp(top, bottom, down).reshape(GRID_SIDE * GRID_SIDE, -1)
    save_image(make_grid(decode(model, grid_codes), nrow=GRID_SIDE, padding=GRID_PADDING, pad_value=1.0), path)


def read_curves(path):
    """The stage, losses and lr of each row of a history.csv; a ValueError names a row that is not numbers."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ValueError("it has no rows")
    curves = {key: [] for key in CURVES}
    for line, row in enumerate(rows, start=2):
        try:
            for key in CURVES:
                curves[key].append(float(row[key]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"line {line} is not a row of numbers (cut short?)") from None
    return curves


def draw_curves(history_paths, labels, path):
    """Learning rate, train loss and test loss against epochs counted across both stages."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for history_path, label in zip(history_paths, labels):
        curves = read_curves(history_path)
        epochs = range(1, len(curves["lr"]) + 1)
        for axis, key in zip(axes, ("lr", "train_loss", "test_loss")):
            axis.plot(epochs, curves[key], label=label, marker=".", markersize=3)
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


def draw_data_set(model, args, device):
    """Every picture but the curves, from the test (and training) images of --dataset; a picture that
    needs more images than there are is named and skipped."""
    (train_images, _), (test_images, test_labels) = data.load_splits(args.data_dir, args.dataset, device, None,
                                                                     args.plain_resize)
    out = partial(os.path.join, args.out_dir)

    def draw(name, needed, have, make):  # make(path) draws it; nothing is computed for a picture skipped
        if have >= needed:
            make(out(name))
        else:
            say(f"skipped {name}: it needs {needed} images, there are {have}", file=sys.stderr)

    tests = len(test_images)
    draw("reconstructions.png", 1, tests, partial(draw_reconstructions, model, test_images[:NUM_RECONSTRUCTIONS]))
    for number, (first, second) in enumerate(HOMOTOPY_PAIRS, start=1):
        draw(f"homotopy_{number}.png", second + 1, tests, partial(draw_homotopy, model, test_images, first, second))
    errors = per_image_mse(model, test_images)
    label_name = CLASS_WORDS[args.dataset]
    if is_labelled(test_labels):
        draw("latent_pca.png", 2, tests, lambda path: draw_latent_pca(latent_codes(model, test_images), test_labels,
                                                                       label_name, path))
        draw("per_digit_error.png", 1, tests, partial(draw_per_digit_error, errors, test_labels, label_name))
    else:
        say("no class labels (images outside class subfolders): skipped latent_pca.png and per_digit_error.png",
            file=sys.stderr)
    worst = errors.topk(min(NUM_WORST, len(errors))).indices.to(device)
    draw("worst.png", 1, tests, partial(draw_reconstructions, model, test_images[worst]))
    draw("samples.png", 2, len(train_images), lambda path: draw_samples(model, latent_codes(model, train_images), path))
    draw("interpolation_grid.png", len(GRID_CORNERS), tests, partial(draw_interpolation_grid, model, test_images))


def draw_history(args):
    history_paths = args.history or [os.path.join(os.path.dirname(args.checkpoint), "history.csv")]
    labels = args.labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in history_paths]
    try:
        draw_curves(history_paths, labels, os.path.join(args.out_dir, "curves.png"))
    except (OSError, ValueError, csv.Error) as error:
        say(f"skipped curves.png: cannot read the history {', '.join(history_paths)} ({error})", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    try:
        device = data.choose_device(args.device)
        model, _ = load_checkpoint(args.checkpoint, device)
        if not all(torch.isfinite(weight).all() for weight in model.state_dict().values()):
            raise data.InputError(f"{args.checkpoint}: its weights hold NaN or inf (a diverged run?), nothing to draw")
        os.makedirs(args.out_dir, exist_ok=True)
        if args.images:
            import pictures

            images, _ = pictures.read_pictures(pictures.picture_paths(args.images), args.plain_resize)
            draw_reconstructions(model.eval(), images.to(device), os.path.join(args.out_dir, "pictures.png"))
        else:
            draw_data_set(model.eval(), args, device)
            draw_history(args)
    except (CheckpointError, data.InputError, OSError) as error:
        return data.fail(error)
    except KeyboardInterrupt:
        return data.fail("stopped by Ctrl-C", 130)
    say(f"wrote {', '.join(sorted(os.listdir(args.out_dir)))} into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
