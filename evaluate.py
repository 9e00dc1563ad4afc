"""Test metrics of a trained autoencoder.

    python evaluate.py best.pt --data-dir ./data
    python evaluate.py best.pt --images photo.jpg my-digits/

prints one name=value per line, test_mse last: PSNR, summed squared error, the MSE on a fixed
warped copy of the test set, 5-nearest-neighbour accuracy on the latent codes, the MSE of each
class, and the test MSE (mean over every pixel of every test image). With --images: one line per
picture with its MSE, then test_mse of them all. In a notebook: evaluate.main([...]).
"""

import argparse
import sys

import torch
import torch.nn.functional as F

import data
from data import say
from model import CheckpointError, load_checkpoint, per_image_mse

CLASS_WORDS = {"mnist": "digit", "fashion-mnist": "class", "images": "class"}  # in metric names
WARP_SEED = 2024  # the fixed draw of augmentation parameters behind warped_test_mse
EVAL_BATCH_SIZE = 200
KNN_NEIGHBOURS = 5
KNN_CHUNK = 500  # test codes per distance matrix: 500 x 60,000 floats is 120 MB
COARSE_METRICS = ("test_psnr", "knn_accuracy")  # printed with 4 decimals; the others with 7


def latent_codes(model, images):
    """The encoder's 128 numbers for each image, [N, 128]."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([model.encoder(x) for x in data.batches(images, EVAL_BATCH_SIZE)])


def warped_copy(images, seed=WARP_SEED):
    """The images warped once by the stage-2 augmentation with a fixed seed, uint8 like the
    originals. Drawn on the CPU, so the copy is the same whatever device evaluates it."""
    warped = data.augment(data.to_float(images.cpu()), torch.Generator().manual_seed(seed))
    return warped.mul(255).round().to(torch.uint8)[:, 0].to(images.device)


def knn_accuracy(train_codes, train_labels, test_codes, test_labels, k=KNN_NEIGHBOURS):
    """Accuracy of a k-nearest-neighbour vote (Euclidean) on latent codes. Ties between classes go
    to the smallest label, as in scikit-learn's KNeighborsClassifier."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test_codes), KNN_CHUNK):
        chunk = test_codes[start : start + KNN_CHUNK]
        distances = torch.cdist(chunk, train_codes)
        nearest = distances.topk(min(k, len(train_codes)), largest=False).indices
        votes = F.one_hot(train_labels[nearest], num_classes).sum(dim=1)
        correct += (votes.argmax(dim=1) == test_labels[start : start + KNN_CHUNK]).sum().item()
    return correct / len(test_codes)


def is_labelled(*label_tensors):
    return all(bool((labels != data.NO_LABEL).all()) for labels in label_tensors)


def test_metrics(model, train_split, test_split, class_word="digit"):
    """Every metric, in the order printed; test_mse comes last. Without labels (a folder of
    images outside class subfolders) there is no kNN accuracy and no per-class MSE."""
    (train_images, train_labels), (test_images, test_labels) = train_split, test_split
    errors = per_image_mse(model, test_images)
    metrics = {
        "test_psnr": (10 * torch.log10(1 / errors.clamp_min(1e-12))).mean().item(),
        "test_mse_sum": errors.mean().item() * test_images[0].numel(),
        "warped_test_mse": per_image_mse(model, warped_copy(test_images)).mean().item(),
    }
    if is_labelled(train_labels, test_labels):
        train_codes = latent_codes(model, train_images)
        test_codes = latent_codes(model, test_images)
        metrics["knn_accuracy"] = knn_accuracy(train_codes, train_labels, test_codes, test_labels)
        labels = test_labels.cpu()
        for label in labels.unique().tolist():
            metrics[f"test_mse_{class_word}_{label}"] = errors[labels == label].mean().item()
    metrics["test_mse"] = errors.mean().item()
    return metrics


def report(model, args):
    """Print the metrics of `model` on the data set that `args` names, as name=value lines."""
    device = next(model.parameters()).device
    splits = data.load_splits(args.data_dir, args.dataset, device, None, args.plain_resize)
    if not is_labelled(splits[0][1], splits[1][1]):
        say("no class labels (images outside class subfolders): knn_accuracy and the per-class"
            " MSE are skipped", file=sys.stderr)
    for name, value in test_metrics(model, *splits, CLASS_WORDS[args.dataset]).items():
        say(f"{name}={value:.4f}" if name in COARSE_METRICS else f"{name}={value:.7f}")


def report_pictures(model, args):
    """Print the MSE of each picture that --images names, then test_mse of them all."""
    import pictures

    images, paths = pictures.read_pictures(pictures.picture_paths(args.images), args.plain_resize)
    errors = per_image_mse(model, images.to(next(model.parameters()).device))
    for path, error in zip(paths, errors.tolist()):
        say(f"{path} mse={error:.7f}")
    say(f"test_mse={errors.mean().item():.7f}")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint of this project or the reference's")
    data.add_arguments(parser)
    parser.add_argument("--images", nargs="+", metavar="PATH",
                        help="pictures of your own, files or folders: the MSE of each")
    return parser.parse_args(argv)


def main(argv=()):
    """Print the metrics as `python evaluate.py ARGS` does: `argv` is the list of ARGS, e.g.
    ["best.pt", "--data-dir", "data"]. Returns the exit status: 0 done, 2 a mistake in the flags
    or files, 128 plus the signal's number when Ctrl-C, SIGHUP or SIGTERM stopped it."""
    try:
        args = parse_args(argv)
    except SystemExit as exit:  # argparse has printed the usage and the mistake, or the help
        return exit.code
    with data.script_run():
        try:
            model, _ = load_checkpoint(args.checkpoint, data.choose_device(args.device))
            model = model.to(memory_format=torch.channels_last)  # as train.py evaluates it
            if args.images:
                report_pictures(model, args)
            else:
                report(model, args)
        except (CheckpointError, data.InputError) as error:
            return data.fail(error)
        except data.Interrupted as stop:
            return data.fail(f"stopped by {data.stop_name(stop.args[0])}", 128 + stop.args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
