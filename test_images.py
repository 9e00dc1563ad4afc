"""--dataset images: a folder of your own pictures, trained, evaluated and drawn."""

import os

import pytest
import torch
from PIL import Image

import data
import evaluate
import train
import visualize
from conftest import synthetic_digits

SIZES = [(28, 28), (40, 40), (64, 48)]


def save_picture(path, digit, size, dark_on_light=False, mode="L"):
    """A 28x28 uint8 digit saved at another size and mode, light on dark like MNIST unless asked."""
    pixels = (255 - digit) if dark_on_light else digit
    Image.fromarray(pixels.numpy(), mode="L").resize(size).convert(mode).save(path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ and test/, each with class subfolders 'even' and 'odd' of PNGs and JPEGs of
    mixed sizes and modes, some drawn dark on light, and a file that is no image."""
    root = tmp_path_factory.mktemp("pictures")
    digits, labels = synthetic_digits(120, seed=4)
    for index, (digit, label) in enumerate(zip(digits, labels.tolist())):
        split = "test" if index % 5 == 0 else "train"
        folder = root / split / ("even" if label % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        extension = "jpg" if index % 3 == 0 else "png"
        save_picture(folder / f"{index}.{extension}", digit, SIZES[index % 3], dark_on_light=index % 4 == 0,
                     mode="RGB" if index % 5 == 0 else "L")
    (root / "train" / "notes.txt").write_text("not a picture")
    return str(root)


def test_a_folder_loads_like_mnist(image_folder):
    images, labels = data.load_split(image_folder, train=True, dataset="images")
    assert images.dtype == torch.uint8 and images.shape == (96, 28, 28)
    assert sorted(labels.unique().tolist()) == [0, 1]  # even, odd
    test_images, _ = data.load_split(image_folder, train=False, dataset="images")
    assert test_images.shape == (24, 28, 28)


def test_dark_digits_on_light_paper_are_inverted(tmp_path):
    digit = synthetic_digits(1, seed=5)[0][0]
    save_picture(tmp_path / "light.png", digit, (28, 28))
    save_picture(tmp_path / "dark.png", digit, (28, 28), dark_on_light=True)
    images, classes = data.read_image_folder(str(tmp_path))
    assert classes == (None, None)
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], digit)


def test_a_folder_without_train_and_test_keeps_a_seeded_tenth_for_testing(tmp_path):
    digits, _ = synthetic_digits(50, seed=6)
    for index, digit in enumerate(digits):
        save_picture(tmp_path / f"{index:02d}.png", digit, (28, 28))
    train_images, train_labels = data.load_split(str(tmp_path), train=True, dataset="images")
    test_images, _ = data.load_split(str(tmp_path), train=False, dataset="images")
    assert len(train_images) == 45 and len(test_images) == 5
    assert (train_labels == data.NO_LABEL).all()
    every = {tuple(image.flatten().tolist()) for image in torch.cat([train_images, test_images])}
    assert every == {tuple(digit.flatten().tolist()) for digit in digits}


def test_train_evaluate_and_visualize_on_a_folder(image_folder, tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    common = ["--dataset", "images", "--data-dir", image_folder, "--device", "cpu"]
    data.read_image_folder.cache_clear()  # a process reads a folder once; this test wants its message
    assert train.main([*common, "--out-dir", out_dir, "--epochs", "1", "--batch-size", "16"]) == 0
    assert "skipped 1 files that are not images (e.g. notes.txt)" in capsys.readouterr().out
    checkpoint = os.path.join(out_dir, "best.pt")
    assert evaluate.main([checkpoint, "--dataset", "images", "--data-dir", image_folder, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split("=")[0] for line in lines if "=" in line]
    assert names == ["test_psnr", "test_mse_sum", "warped_test_mse", "knn_accuracy", "test_mse_class_0",
                     "test_mse_class_1", "test_mse"]
    pictures = str(tmp_path / "pictures")
    assert visualize.main(["--checkpoint", checkpoint, *common, "--out-dir", pictures]) == 0
    assert {"reconstructions.png", "latent_pca.png", "per_digit_error.png", "curves.png"} <= set(os.listdir(pictures))


def test_without_labels_the_class_metrics_are_skipped_with_a_message(tmp_path, capsys):
    digits, _ = synthetic_digits(40, seed=7)
    folder = tmp_path / "flat"
    folder.mkdir()
    for index, digit in enumerate(digits):
        save_picture(folder / f"{index}.png", digit, (32, 32))
    out_dir = str(tmp_path / "run")
    common = ["--dataset", "images", "--data-dir", str(folder), "--device", "cpu"]
    assert train.main([*common, "--out-dir", out_dir, "--epochs", "1", "--batch-size", "8"]) == 0
    capsys.readouterr()
    assert evaluate.main([os.path.join(out_dir, "best.pt"), *common]) == 0
    out, err = capsys.readouterr()
    assert "knn_accuracy" not in out and out.strip().splitlines()[-1].startswith("test_mse=")
    assert "no class labels" in err


def truncated_folder(root):
    digits, _ = synthetic_digits(40, seed=8)
    for index, digit in enumerate(digits):
        save_picture(root / f"{index}.png", digit, (28, 28))
    content = (root / "7.png").read_bytes()
    (root / "7.png").write_bytes(content[: len(content) // 2])


@pytest.mark.parametrize("case, words", [
    ("missing", ["nowhere", "no such folder"]),
    ("empty", ["no images"]),
    ("truncated", ["7.png"]),
    ("too few", ["fewer than one batch", "--batch-size"]),
])
def test_bad_folders_end_with_one_line_and_status_2(case, words, tmp_path, capsys):
    folder = tmp_path / ("nowhere" if case == "missing" else "pictures")
    if case == "empty":
        folder.mkdir()
        (folder / "readme.txt").write_text("no pictures here")
    elif case == "truncated":
        folder.mkdir()
        truncated_folder(folder)
    elif case == "too few":
        folder.mkdir()
        for index, digit in enumerate(synthetic_digits(20, seed=9)[0]):
            save_picture(folder / f"{index}.png", digit, (28, 28))
    out_dir = tmp_path / "run"
    assert train.main(["--dataset", "images", "--data-dir", str(folder), "--out-dir", str(out_dir), "--epochs", "1",
                       "--device", "cpu"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    for word in words:
        assert word in line, line
    assert not [name for name in os.listdir(out_dir) if name != ".lock"] if os.path.exists(out_dir) else True
