"""Your own pictures: framed as MNIST digits, trained on (--dataset images), evaluated and
drawn, one by one (--images); bad files end with one line."""

import io
import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import data
import evaluate
import pictures
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
        save_picture(
            folder / f"{index}.{extension}",
            digit,
            SIZES[index % 3],
            dark_on_light=index % 4 == 0,
            mode="RGB" if index % 5 == 0 else "L",
        )
    (root / "train" / "notes.txt").write_text("not a picture")
    return str(root)


def test_a_folder_loads_like_mnist(image_folder):
    images, labels = data.load_split(image_folder, train=True, dataset="images")
    assert images.dtype == torch.uint8 and images.shape == (96, 28, 28)
    assert sorted(labels.unique().tolist()) == [0, 1]  # even, odd
    test_images, _ = data.load_split(image_folder, train=False, dataset="images")
    assert test_images.shape == (24, 28, 28)


def centre_of_mass(image):
    image = image.double()
    rows, cols = (
        torch.arange(image.shape[0], dtype=torch.float64),
        torch.arange(image.shape[1], dtype=torch.float64),
    )
    return (image.sum(1) @ rows / image.sum()).item(), (image.sum(0) @ cols / image.sum()).item()


def ink_box(image):
    rows, cols = (image > 0).any(1).nonzero()[:, 0], (image > 0).any(0).nonzero()[:, 0]
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def photographed(digit, seed=0):
    """`digit` as dark ink on a photo of a page: 5 times as large, off-centre on a 400x300 canvas,
    the page lit unevenly from one corner, sensor noise, saved as JPEG; returns the JPEG bytes."""
    generator = torch.Generator().manual_seed(seed)
    large = F.interpolate(digit[None, None].float() / 255, scale_factor=5, mode="bilinear")[0, 0]
    y, x = torch.meshgrid(torch.linspace(0, 1, 300), torch.linspace(0, 1, 400), indexing="ij")
    page = 0.45 + 0.4 * x - 0.15 * y + 0.1 * (x - 0.5) ** 2  # grey to bright across the page
    page[30:170, 220:360] *= 1 - 0.8 * large  # the ink darkens the paper it is on
    page += 0.03 * torch.randn(page.shape, generator=generator)
    buffer = io.BytesIO()
    Image.fromarray((page.clamp(0, 1) * 255).round().byte().numpy(), mode="L").save(
        buffer, "JPEG", quality=80
    )
    return buffer.getvalue()


def test_an_off_centre_digit_on_an_unevenly_lit_photo_is_framed_as_mnist(tmp_path):
    digit = synthetic_digits(10, seed=5)[0][3]
    (tmp_path / "photo.jpg").write_bytes(photographed(digit))
    framed = pictures.read_picture(str(tmp_path / "photo.jpg"))
    assert framed.dtype == torch.uint8 and framed.shape == (28, 28)
    com_y, com_x = centre_of_mass(framed)
    assert abs(com_y - pictures.CENTRE) <= 1 and abs(com_x - pictures.CENTRE) <= 1
    height, width = ink_box(framed)
    assert (
        max(height, width) <= 20 and max(height, width) >= 19
    )  # scaled to fit the box, not shrunk by noise
    assert (
        framed.max() == 255 and (framed > 0).float().mean() < 0.35
    )  # ink at full brightness, paper black
    # The same digit framed from a clean picture of it: the photo's framing finds the same digit.
    clean = pictures.frame_like_mnist(digit)
    assert (framed.float() - clean.float()).pow(2).mean().sqrt() < 40


def test_dark_on_light_and_light_on_dark_give_the_same_digit(tmp_path):
    digit = synthetic_digits(1, seed=5)[0][0]
    save_picture(tmp_path / "light.png", digit, (56, 56))
    save_picture(tmp_path / "dark.png", digit, (56, 56), dark_on_light=True, mode="RGB")
    images, classes = pictures.read_folder(str(tmp_path))
    assert classes == (None, None)
    assert (images[0].int() - images[1].int()).abs().max() <= 1


def test_a_digit_framed_as_mnist_comes_through_unchanged():
    digits = synthetic_digits(20, seed=6)[0]
    framed = [pictures.frame_like_mnist(digit) for digit in digits]
    assert all(torch.equal(pictures.frame_like_mnist(once), once) for once in framed)
    assert all(max(ink_box(once)) == 20 for once in framed)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MNIST_DATA_DIR"),
    reason="set MNIST_DATA_DIR to the folder holding MNIST/raw/",
)
def test_mnist_digits_come_through_framing_unchanged_or_within_a_few_grey_levels():
    images = data.load_split(os.environ["MNIST_DATA_DIR"], train=False)[0][:500]
    framed = torch.stack([pictures.frame_like_mnist(image) for image in images])
    unchanged = (framed == images).flatten(1).all(1)
    assert (
        unchanged.float().mean() > 0.85
    )  # the rest have a faint peak, which framing brings to 255
    assert ((framed > 0) == (images > 0)).flatten(1).all(1).float().mean() > 0.99


def test_a_blank_picture_is_named_and_skipped(tmp_path, capsys):
    digit = synthetic_digits(1, seed=5)[0][0]
    save_picture(tmp_path / "digit.png", digit, (40, 40))
    noise = (128 + 10 * torch.randn(60, 60)).clamp(0, 255).byte()
    Image.fromarray(noise.numpy(), mode="L").save(tmp_path / "blank.png")
    images, classes = pictures.read_folder(str(tmp_path))
    assert len(images) == 1
    assert "skipped blank.png: no ink found" in capsys.readouterr().out


def test_plain_resize_keeps_the_whole_picture(tmp_path):
    digit = synthetic_digits(1, seed=5)[0][0]
    save_picture(tmp_path / "digit.png", 255 - digit, (28, 28))
    [image] = pictures.read_folder(str(tmp_path), plain_resize=True)[0]
    assert torch.equal(image, digit)


def test_a_folder_without_train_and_test_keeps_a_seeded_tenth_for_testing(tmp_path):
    digits, _ = synthetic_digits(50, seed=6)
    for index, digit in enumerate(digits):
        save_picture(tmp_path / f"{index:02d}.png", digit, (28, 28))
    train_images, train_labels = data.load_split(str(tmp_path), train=True, dataset="images")
    test_images, _ = data.load_split(str(tmp_path), train=False, dataset="images")
    assert len(train_images) == 45 and len(test_images) == 5
    assert (train_labels == data.NO_LABEL).all()
    every = {tuple(image.flatten().tolist()) for image in torch.cat([train_images, test_images])}
    assert every == {tuple(pictures.frame_like_mnist(digit).flatten().tolist()) for digit in digits}


def test_train_evaluate_and_visualize_on_a_folder(image_folder, tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    common = ["--dataset", "images", "--data-dir", image_folder, "--device", "cpu"]
    pictures.read_folder.cache_clear()  # a process reads a folder once; this test wants its message
    assert train.main([*common, "--out-dir", out_dir, "--epochs", "1", "--batch-size", "16"]) == 0
    assert "skipped 1 files that are not images (e.g. notes.txt)" in capsys.readouterr().out
    checkpoint = os.path.join(out_dir, "best.pt")
    assert (
        evaluate.main(
            [checkpoint, "--dataset", "images", "--data-dir", image_folder, "--device", "cpu"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split("=")[0] for line in lines if "=" in line]
    assert names == [
        "test_psnr",
        "test_mse_sum",
        "warped_test_mse",
        "knn_accuracy",
        "test_mse_class_0",
        "test_mse_class_1",
        "test_mse",
    ]
    drawn = str(tmp_path / "drawn")
    assert visualize.main(["--checkpoint", checkpoint, *common, "--out-dir", drawn]) == 0
    assert {"reconstructions.png", "latent_pca.png", "per_digit_error.png", "curves.png"} <= set(
        os.listdir(drawn)
    )


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


def damaged_folder(root, case):
    """40 good pictures and one damaged one, 7.png: truncated, empty, or a PNG signature
    before a corrupt body."""
    digits, _ = synthetic_digits(40, seed=8)
    for index, digit in enumerate(digits):
        save_picture(root / f"{index}.png", digit, (28, 28))
    content = (root / "7.png").read_bytes()
    damaged = {
        "truncated": content[: len(content) // 2],
        "empty": b"",
        "corrupt": content[:8] + bytes(reversed(content[8:])),
    }[case]
    (root / "7.png").write_bytes(damaged)


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["nowhere", "no such folder"]),
        ("no pictures", ["no pictures"]),
        ("truncated", ["7.png", "cannot read"]),
        ("empty", ["7.png", "cannot read"]),
        ("corrupt", ["7.png", "cannot read"]),
        ("too few", ["fewer than one batch", "--batch-size"]),
    ],
)
def test_bad_folders_end_with_one_line_and_status_2(case, words, tmp_path, capsys):
    folder = tmp_path / ("nowhere" if case == "missing" else "pictures")
    if case == "no pictures":
        folder.mkdir()
        (folder / "readme.txt").write_text("no pictures here")
    elif case in ("truncated", "empty", "corrupt"):
        folder.mkdir()
        damaged_folder(folder, case)
    elif case == "too few":
        folder.mkdir()
        for index, digit in enumerate(synthetic_digits(20, seed=9)[0]):
            save_picture(folder / f"{index}.png", digit, (28, 28))
    out_dir = tmp_path / "run"
    assert (
        train.main(
            [
                "--dataset",
                "images",
                "--data-dir",
                str(folder),
                "--out-dir",
                str(out_dir),
                "--epochs",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    [line] = capsys.readouterr().err.strip().splitlines()
    for word in words:
        assert word in line, line
    assert (
        not [name for name in os.listdir(out_dir) if name != ".lock"]
        if os.path.exists(out_dir)
        else True
    )


@pytest.fixture
def loose_photos(tmp_path):
    """Three photos of digits and one folder of two more, with a note among them."""
    digits = synthetic_digits(10, seed=11)[0]
    paths = []
    for index in range(3):
        path = tmp_path / f"photo{index}.jpg"
        path.write_bytes(photographed(digits[index], seed=index))
        paths.append(str(path))
    (tmp_path / "more").mkdir()
    for index in (3, 4):
        save_picture(
            tmp_path / "more" / f"drawn{index}.png", digits[index], (90, 70), dark_on_light=True
        )
    (tmp_path / "more" / "notes.txt").write_text("not a picture")
    return [*paths, str(tmp_path / "more")]


def test_evaluate_prints_the_mse_of_each_loose_picture(trained_run, loose_photos, capsys):
    checkpoint = os.path.join(trained_run, "best.pt")
    assert evaluate.main([checkpoint, "--images", *loose_photos, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if " mse=" in line]
    names = [os.path.basename(row.split(" mse=")[0]) for row in rows]
    assert names == ["photo0.jpg", "photo1.jpg", "photo2.jpg", "drawn3.png", "drawn4.png"]
    errors = [float(row.split(" mse=")[1]) for row in rows]
    # Each value is printed rounded to 7 decimals: the mean of the rounded ones may differ in the
    # last.
    assert lines[-1].startswith("test_mse=") and all(error > 0 for error in errors)
    assert float(lines[-1].split("=")[1]) == pytest.approx(np.mean(errors), abs=1.01e-7)
    assert any("skipped 1 files that are not images (e.g. " in line for line in lines)


def test_visualize_draws_each_loose_picture_above_its_reconstruction(
    trained_run, loose_photos, tmp_path
):
    out_dir = str(tmp_path / "drawn")
    assert (
        visualize.main(
            [
                "--checkpoint",
                os.path.join(trained_run, "best.pt"),
                "--images",
                *loose_photos,
                "--device",
                "cpu",
                "--out-dir",
                out_dir,
            ]
        )
        == 0
    )
    assert os.listdir(out_dir) == ["pictures.png"]
    picture = np.asarray(Image.open(os.path.join(out_dir, "pictures.png")).convert("L"))
    assert picture.shape == (2 * 30 + 2, 5 * 30 + 2)


def test_a_missing_loose_picture_ends_with_one_line(trained_run, tmp_path, capsys):
    assert (
        evaluate.main(
            [os.path.join(trained_run, "best.pt"), "--images", str(tmp_path / "nowhere.jpg")]
        )
        == 2
    )
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "nowhere.jpg" in line


def framing_error(framed, reference):
    """The least MSE (pixels in [0, 1]) between two framings over shifts of up to one pixel, as
    results/own-digits/measure.py measures framing."""
    padded = F.pad(framed.float()[None] / 255, (1, 1, 1, 1))[0]
    return min(
        ((padded[1 + dy : 29 + dy, 1 + dx : 29 + dx] - reference.float() / 255) ** 2).mean().item()
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def on_paper(digit, lines_every=0, grid=False, margin=False, desk=0, tilt=0.0, shadow=False):
    """`digit` as dark pen on paper, photographed as 240x200: ruled lines every `lines_every` pixels
    (and across them on `grid` paper), a red margin, a desk `desk` pixels wide along the left and
    top, the page tilted by `tilt` degrees, its lower right half in a shadow half as light."""
    page = torch.full(
        (3, 480, 400), 0.95
    )  # its middle is photographed, so the lines run on beyond it
    if lines_every:
        page[:, lines_every // 2 :: lines_every] = torch.tensor([0.6, 0.7, 0.9])[:, None, None]
    if grid:
        page[:, :, lines_every // 2 :: lines_every] = torch.tensor([0.6, 0.7, 0.9])[:, None, None]
    if margin:
        page[:, :, 120:123] = torch.tensor([0.85, 0.3, 0.3])[:, None, None]
    ink = F.interpolate(digit[None, None].float() / 255, size=(96, 96), mode="bicubic")[0, 0].clamp(
        0, 1
    )
    page[:, 190:286, 160:256] *= 1 - 0.9 * ink
    page = TF.rotate(page, tilt)[:, 120:360, 100:300]
    if shadow:
        y, x = torch.meshgrid(torch.arange(240.0), torch.arange(200.0), indexing="ij")
        page *= 1 - 0.5 * torch.sigmoid((x + y - 230) / 3)
    if desk:
        page[:, :desk], page[:, :, :desk] = 0.35, 0.35
    return Image.fromarray((page.permute(1, 2, 0) * 255).round().byte().numpy(), "RGB")


@pytest.mark.parametrize(
    "paper",
    [
        {"lines_every": 24, "margin": True},
        {"desk": 30},
        {"desk": 30, "tilt": 4},
        {"lines_every": 20, "grid": True, "tilt": 5},
        {"shadow": True},
    ],
)
def test_digits_on_ruled_or_squared_paper_a_desk_or_in_a_shadow_are_framed_as_the_clean_digit(
    paper, tmp_path
):
    digits = synthetic_digits(6, seed=13)[0]
    errors = []
    for index, digit in enumerate(digits):
        on_paper(digit, **paper).save(tmp_path / f"{index}.png")
        clean = F.interpolate(digit[None, None].float(), size=(96, 96), mode="bicubic")[0, 0].clamp(
            0, 255
        )
        errors.append(
            framing_error(
                pictures.read_picture(str(tmp_path / f"{index}.png")),
                pictures.frame_like_mnist(clean.round().byte()),
            )
        )
    assert max(errors) < 0.02, errors


def test_pictures_py_writes_each_framed_digit_for_any_mnist_model(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    digits = synthetic_digits(3, seed=14)[0]
    for index, digit in enumerate(digits):
        save_picture(folder / f"d{index}.jpg", digit, (64, 64), dark_on_light=True, mode="RGB")
    (folder / "notes.txt").write_text("not a picture")
    out_dir = tmp_path / "framed"
    assert pictures.main([str(folder), "--out-dir", str(out_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len([line for line in lines if " -> " in line]) == 3 and any(
        "skipped 1 files" in line for line in lines
    )
    for index in range(3):
        written = Image.open(out_dir / f"d{index}.png")
        assert written.size == (28, 28) and written.mode == "L"
        assert torch.equal(
            torch.from_numpy(np.array(written)),
            pictures.read_picture(str(folder / f"d{index}.jpg")),
        )
    before = (out_dir / "d0.png").read_bytes()
    assert pictures.main([str(folder), "--out-dir", str(out_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out_dir / "d0.png").read_bytes() == before
    assert pictures.main([str(folder), "--out-dir", str(out_dir), "--overwrite"]) == 0
    (folder / "d1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    assert pictures.main([str(folder), "--out-dir", str(tmp_path / "other")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "d1.png" in line and "cannot read" in line and not (tmp_path / "other").exists()


def ring():
    """An upright oval stroke, a "0", as a 28x28 MNIST-like digit."""
    y, x = torch.meshgrid(torch.arange(28) - 13.5, torch.arange(28) - 13.5, indexing="ij")
    radius = ((y / 9) ** 2 + (x / 6.5) ** 2).sqrt()
    return ((1 - 5 * (radius - 1).abs()).clamp(0, 1) * 255).round().byte()


def drawn(digit, scale, bold):
    """`digit` drawn `scale` times as large, its strokes `bold` pixels wider on each side."""
    large = F.interpolate(digit[None, None].float(), scale_factor=scale, mode="bilinear")
    return F.max_pool2d(large, 2 * bold + 1, stride=1, padding=bold)[0, 0]


def tight_crop(large, dark_on_light, seed):
    """A large digit with a little sensor noise, cropped to its ink: the strokes touch the
    picture's edges."""
    generator = torch.Generator().manual_seed(seed)
    top, bottom, left, right = pictures.bounds(large > 40)
    crop = large[top:bottom, left:right]
    picture = (235 - 0.85 * crop) if dark_on_light else (20 + 0.85 * crop)
    picture = picture + 3 * torch.randn(picture.shape, generator=generator)
    return picture.round().clamp(0, 255).byte()


@pytest.mark.parametrize("dark_on_light", [True, False])
@pytest.mark.parametrize("bold", [0, 4])  # bold: a marker's strokes, the crop nearly half ink
def test_a_digit_cropped_tight_to_its_ink_is_framed_with_a_margin_or_refused(dark_on_light, bold,
                                                                            tmp_path, capsys):
    digits = [*synthetic_digits(10, seed=17)[0], ring()]
    results = []
    for index, digit in enumerate(digits):
        path = tmp_path / f"{index}.png"
        large = drawn(digit, 4, bold)
        Image.fromarray(tight_crop(large, dark_on_light, index).numpy()).save(path)
        try:
            framed = pictures.read_picture(str(path))
        except pictures.ReachesEdge:
            results.append("refused")
            continue
        results.append(framing_error(framed, pictures.frame_like_mnist(large.round().byte())))
    assert all(result == "refused" or result <= 0.02 for result in results), results
    assert sum(result != "refused" for result in results) >= 6  # most are framed
    assert results[-1] != "refused"  # the "0": paper inside and out, the ink a minority of it
    images, kept = pictures.read_pictures(pictures.picture_paths([str(tmp_path)]))
    refused = [line for line in capsys.readouterr().out.splitlines() if "reaches" in line]
    assert len(refused) == results.count("refused") == len(digits) - len(kept)
    assert all("--plain-resize" in line for line in refused)


def test_a_faint_pencil_digit_well_above_the_papers_noise_is_framed(tmp_path):
    digit = synthetic_digits(1, seed=5)[0][0]
    generator = torch.Generator().manual_seed(0)
    ink = F.interpolate(digit[None, None].float() / 255, size=(96, 96), mode="bicubic")[0, 0]
    page = torch.full((200, 180), 0.9)
    page[50:146, 40:136] -= 0.1 * 0.9 * ink.clamp(0, 1)  # 10% darker than the paper at most
    page += 0.1 * 0.9 / 20 * torch.randn(page.shape, generator=generator)  # a 20th of that
    Image.fromarray((page.clamp(0, 1) * 255).round().byte().numpy()).save(tmp_path / "pencil.png")
    framed = pictures.read_picture(str(tmp_path / "pencil.png"))
    clean = F.interpolate(digit[None, None].float(), size=(96, 96), mode="bicubic")[0, 0]
    reference = pictures.frame_like_mnist(clean.clamp(0, 255).round().byte())
    assert framing_error(framed, reference) < 0.02


def test_clean_pictures_of_digits_are_framed_as_mnist_did_and_fast(tmp_path):
    digits = synthetic_digits(300, seed=18)[0]
    expected = []
    for index, digit in enumerate(digits):  # a clean background: the digits as MNIST ships them
        Image.fromarray(digit.numpy()).save(tmp_path / f"{index:03d}.png")
        top, bottom, left, right = pictures.bounds(digit > 0)  # MNIST's framing: crop, fit, centre
        expected.append(pictures.fitted(digit[top:bottom, left:right].float() / 255))
    started = time.perf_counter()
    images, _ = pictures.read_pictures(pictures.picture_paths([str(tmp_path)]))
    seconds = time.perf_counter() - started
    assert torch.equal(images, torch.stack(expected))
    assert seconds < 300 / 200, f"{300 / seconds:.0f} pictures a second"  # 1,000 a second here
