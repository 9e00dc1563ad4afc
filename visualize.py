"""Draw what a trained autoencoder does.

    python visualize.py --checkpoint best.pt --out-dir images

writes into --out-dir:
  reconstructions.png     the first 32 test digits (top) and their reconstructions (bottom)
  homotopy_1..3.png       decoded straight lines between the codes of two test digits
  curves.png              learning rate, train and test loss per epoch, both stages
  latent_pca.png          the test codes projected on their first two principal components
  per_digit_error.png     test MSE of each digit
  worst.png               the 16 worst-reconstructed test digits (top) and their reconstructions
  samples.png             32 new digits decoded from a Gaussian fitted to the training codes
  interpolation_grid.png  a 10x10 grid decoded between the codes of four test digits at the corners

The curves come from the history.csv beside the checkpoint, or from the files named by --history
(several are overlaid, e.g. this repo's run against the reference's).

    python visualize.py --checkpoint best.pt --images photo.jpg my-digits/

writes only pictures.png: each of your pictures, framed as MNIST frames its digits, above its
reconstruction. Each PNG is marked as visualize.py's (its "Software" text); a file of the same
name without that mark is never written over. In a notebook: visualize.main([...]), and each
draw_* function returns its picture (a matplotlib Figure, or a tensor for make_grid).
"""

import argparse
import csv
import io
import os
import sys
from functools import partial

import matplotlib
import torch
from matplotlib.figure import Figure
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

import data
import pictures
from data import say
from evaluate import CLASS_WORDS, is_labelled, latent_codes
from model import CheckpointError, load_checkpoint, per_image_mse

SCRIPT = "visualize.py"
NUM_RECONSTRUCTIONS = 32
HOMOTOPY_PAIRS = [(0, 1), (2, 3), (4, 5)]  # test-set indices of the pairs: 7 -> 2, 1 -> 0, 4 -> 1
HOMOTOPY_STEPS = 10  # images strictly between the two ends
GRID_PADDING = 2
NUM_WORST = 16
NUM_SAMPLES = 32
SAMPLE_SEED = 0
GRID_CORNERS = (0, 1, 2, 3)  # test-set indices of the interpolation grid's corners: 7, 2, 1, 0
GRID_SIDE = 10
CURVES = ("stage", "train_loss", "test_loss", "lr")  # the columns of history.csv that are drawn
DATA_SET_PICTURES = ["reconstructions.png", "homotopy_1.png", "homotopy_2.png", "homotopy_3.png",
                     "latent_pca.png", "per_digit_error.png", "worst.png", "samples.png",
                     "interpolation_grid.png", "curves.png"]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="visualize.py", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--checkpoint", default="best.pt", help="model to draw (default: %(default)s)")
    data.add_arguments(parser)
    add("--out-dir", default="images", help="where the PNGs go (default: %(default)s)")
    add("--history", nargs="+", metavar="CSV",
        help="history files to plot (default: history.csv beside the checkpoint)")
    add("--images", nargs="+", metavar="PATH",
        help="pictures of your own, files or folders: only pictures.png, each picture framed as"
             " an MNIST digit above its reconstruction")
    add("--labels", nargs="+", metavar="NAME",
        help="the curves' names in the legend, one per --history file (default: their folders)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.history or [None]):
        parser.error(f"--labels names {len(args.labels)} curves, --history gives"
                     f" {len(args.history or [None])}")
    return args


def decode(model, latent):
    with torch.inference_mode():
        return model.decoder(latent).clamp(0, 1)


def grid(images, columns):
    """Images [N, 1, 28, 28] in [0, 1] as one picture, `columns` a row, white between them."""
    return make_grid(images, nrow=columns, padding=GRID_PADDING, pad_value=1.0)


def draw_reconstructions(model, images):
    """`images` (uint8) in rows of at most NUM_RECONSTRUCTIONS, each row above a row of their
    reconstructions; a short last row is filled with white."""
    originals = data.to_float(images)
    with torch.inference_mode():
        reconstructions = model(originals)[0].clamp(0, 1)
    width = min(len(images), NUM_RECONSTRUCTIONS)
    rows = []
    for start in range(0, len(images), width):
        for row in (originals[start : start + width], reconstructions[start : start + width]):
            rows.append(torch.cat([row, row.new_ones(width - len(row), *row.shape[1:])]))
    return grid(torch.cat(rows), width)


def draw_homotopy(model, test_images, first, second):
    """Top row: decoded codes from `first` to `second`; bottom: the originals under the ends."""
    ends = data.to_float(test_images[[first, second]])
    start, end = latent_codes(model, test_images[[first, second]])
    weights = torch.linspace(0, 1, HOMOTOPY_STEPS + 2, device=start.device)[:, None]
    morph = decode(model, torch.lerp(start, end, weights))
    originals = torch.zeros_like(morph)
    originals[0], originals[-1] = ends[0], ends[1]
    return grid(torch.cat([morph, originals]), len(morph))


def draw_latent_pca(test_codes, test_labels, label_name):
    """The test codes on their first two principal components, one colour per class."""
    codes = test_codes.float().cpu()
    centred = codes - codes.mean(dim=0)
    components = torch.linalg.svd(centred, full_matrices=False).Vh[:2]  # none if all are equal
    projected = torch.zeros(len(codes), 2)
    projected[:, : len(components)] = centred @ components.T
    labels = test_labels.cpu()
    figure = Figure(figsize=(8, 7), layout="constrained")
    axis = figure.subplots()
    colours = matplotlib.colormaps["tab10"]
    for label in labels.unique().tolist():
        chosen = labels == label
        axis.scatter(projected[chosen, 0], projected[chosen, 1], s=3, alpha=0.5,
                     color=colours(label % 10), label=str(label))
    axis.set_title(f"{len(codes):,} test codes, first two principal components")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.legend(title=label_name, markerscale=4, loc="best")
    return figure


def draw_per_digit_error(errors, test_labels, label_name):
    """The test MSE of each class that has test images, and of them all."""
    labels = test_labels.cpu()
    classes = labels.unique().tolist()
    means = [errors[labels == label].mean().item() for label in classes]
    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.subplots()
    axis.bar([str(label) for label in classes], means, color="tab:blue")
    axis.axhline(errors.mean().item(), color="grey", linestyle="--", label="all test images")
    axis.set_xlabel(label_name)
    axis.set_ylabel("test MSE")
    axis.set_title(f"Reconstruction error per {label_name}")
    axis.legend()
    return figure


def draw_samples(model, train_codes):
    """Decode codes drawn from N(mean, covariance) of the training codes, with a fixed seed (its
    own generator: the global one is left alone)."""
    codes = train_codes.cpu().double()
    mean, covariance = codes.mean(dim=0), torch.cov(codes.T)
    # A square root of the covariance from its eigenvectors: it needs no positive definiteness,
    # so codes that vary along few directions (or none: identical pictures) are drawn as well.
    values, vectors = torch.linalg.eigh(covariance)
    root = vectors * values.clamp(min=0).sqrt()
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    normal = torch.randn(NUM_SAMPLES, len(mean), dtype=codes.dtype, generator=generator)
    drawn = (mean + normal @ root.T).float().to(train_codes.device)
    return grid(decode(model, drawn), NUM_SAMPLES // 4)


def draw_interpolation_grid(model, test_images):
    """Bilinear interpolation between four codes at the corners of a square."""
    corners = latent_codes(model, test_images[list(GRID_CORNERS)])
    top_left, top_right, bottom_left, bottom_right = corners
    steps = torch.linspace(0, 1, GRID_SIDE, device=corners.device)
    down, across = steps[:, None, None], steps[None, :, None]
    top = torch.lerp(top_left, top_right, across)
    bottom = torch.lerp(bottom_left, bottom_right, across)
    codes = torch.lerp(top, bottom, down).reshape(GRID_SIDE * GRID_SIDE, -1)
    return grid(decode(model, codes), GRID_SIDE)


def read_curves(path):
    """The stage, losses and lr of each row of a history.csv; a ValueError names a row that is
    not numbers."""
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


def draw_curves(history_paths, labels):
    """Learning rate, train loss and test loss against epochs counted across both stages."""
    figure = Figure(figsize=(15, 4), layout="constrained")
    axes = figure.subplots(1, 3)
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
    return figure


def save(picture, path):
    """A Figure or an image tensor [C, H, W] in [0, 1], as a PNG marked as visualize.py's, written
    whole or not at all (its folder made with the first picture: a refusal leaves none)."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except OSError as error:
        raise data.CannotWrite(f"cannot make {os.path.dirname(path)}: {error.strerror}") from None
    if isinstance(picture, Figure):
        buffer = io.BytesIO()
        picture.savefig(buffer, format="png", dpi=100, metadata={"Software": pictures.mark(SCRIPT)})
        content = buffer.getvalue()
    else:
        content = pictures.png_bytes(to_pil_image(picture.cpu()), SCRIPT)
    data.atomic_write(path, content)


def draw_data_set(model, args, device):
    """Every picture but the curves, from the test (and training) images of --dataset; a picture
    that needs more images than there are is named and skipped. Returns the names written."""
    (train_images, _), (test_images, test_labels) = data.load_splits(
        args.data_dir, args.dataset, device, None, args.plain_resize)
    written = []

    def draw(name, needed, have, make):  # make() draws it; nothing is computed for one skipped
        if have >= needed:
            save(make(), os.path.join(args.out_dir, name))
            written.append(name)
        else:
            say(f"skipped {name}: it needs {needed} images, there are {have}", file=sys.stderr)

    tests = len(test_images)
    first_tests = test_images[:NUM_RECONSTRUCTIONS]
    draw("reconstructions.png", 1, tests, partial(draw_reconstructions, model, first_tests))
    for number, (first, second) in enumerate(HOMOTOPY_PAIRS, start=1):
        homotopy = partial(draw_homotopy, model, test_images, first, second)
        draw(f"homotopy_{number}.png", second + 1, tests, homotopy)
    errors = per_image_mse(model, test_images)
    label_name = CLASS_WORDS[args.dataset]
    if is_labelled(test_labels):
        codes = partial(latent_codes, model, test_images)
        draw("latent_pca.png", 2, tests, lambda: draw_latent_pca(codes(), test_labels, label_name))
        per_class = partial(draw_per_digit_error, errors, test_labels, label_name)
        draw("per_digit_error.png", 1, tests, per_class)
    else:
        say("no class labels (images outside class subfolders): skipped latent_pca.png and"
            " per_digit_error.png", file=sys.stderr)
    worst = errors.topk(min(NUM_WORST, len(errors))).indices.to(device)
    draw("worst.png", 1, tests, partial(draw_reconstructions, model, test_images[worst]))
    train_codes = partial(latent_codes, model, train_images)
    draw("samples.png", 2, len(train_images), lambda: draw_samples(model, train_codes()))
    draw("interpolation_grid.png", len(GRID_CORNERS), tests,
         partial(draw_interpolation_grid, model, test_images))
    return written


def draw_history(args):
    """curves.png from the history files; returns the names written (none if unreadable)."""
    history_paths = args.history or [os.path.join(os.path.dirname(args.checkpoint), "history.csv")]
    labels = args.labels or [os.path.basename(os.path.dirname(os.path.abspath(path)))
                             for path in history_paths]
    try:
        figure = draw_curves(history_paths, labels)
    except (OSError, ValueError, csv.Error) as error:
        say(f"skipped curves.png: cannot read the history {', '.join(history_paths)} ({error})",
            file=sys.stderr)
        return []
    save(figure, os.path.join(args.out_dir, "curves.png"))
    return ["curves.png"]


def draw_pictures(model, args, device):
    """pictures.png: each picture of --images above its reconstruction."""
    images, _ = pictures.read_pictures(pictures.picture_paths(args.images), args.plain_resize)
    save(draw_reconstructions(model, images.to(device)), os.path.join(args.out_dir, "pictures.png"))
    return ["pictures.png"]


def check_out_dir(args):
    """Refuse an --out-dir among the pictures read (they would be read back next time) or one
    holding a file of this script's names that it did not write."""
    if args.images:
        pictures.check_out_dir(args.out_dir, args.images, "--images")
    elif args.dataset == "images":
        pictures.check_out_dir(args.out_dir, [args.data_dir], "--data-dir")
    names = ["pictures.png"] if args.images else DATA_SET_PICTURES
    pictures.check_own([os.path.join(args.out_dir, name) for name in names], SCRIPT)


def main(argv=()):
    """Draw the pictures as `python visualize.py ARGS` does: `argv` is the list of ARGS, e.g.
    ["--checkpoint", "best.pt", "--out-dir", "images"]. Returns the exit status: 0 done, 2 a
    mistake in the flags or files, 4 a file that cannot be written, 128 plus the signal's number
    when Ctrl-C, SIGHUP or SIGTERM stopped it."""
    try:
        args = parse_args(argv)
    except SystemExit as exit:  # argparse has printed the usage and the mistake, or the help
        return exit.code
    with data.script_run():
        try:
            device = data.choose_device(args.device)
            model, _ = load_checkpoint(args.checkpoint, device)
            if not all(torch.isfinite(weight).all() for weight in model.state_dict().values()):
                raise data.InputError(f"{args.checkpoint}: its weights hold NaN or inf (a"
                                      f" diverged run?), nothing to draw")
            check_out_dir(args)
            if args.images:
                written = draw_pictures(model.eval(), args, device)
            else:
                written = draw_data_set(model.eval(), args, device) + draw_history(args)
        except (CheckpointError, data.InputError) as error:
            return data.fail(error)
        except data.CannotWrite as error:
            return data.fail(error, data.EXIT_CANNOT_WRITE)
        except data.Interrupted as stop:
            return data.fail(f"stopped by {data.stop_name(stop.args[0])}", 128 + stop.args[0])
    say(f"wrote {', '.join(written) or 'nothing'} into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
