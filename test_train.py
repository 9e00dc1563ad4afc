"""End-to-end tests of train.py and visualize.py on the tiny synthetic MNIST."""

import csv
import importlib
import io
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate
import train
import visualize
from conftest import write_mnist
from model import AutoEncoder, load_checkpoint

CPU = ["--device", "cpu"]


def history_rows(out_dir):
    with open(os.path.join(out_dir, "history.csv"), newline="") as file:
        return list(csv.DictReader(file))


def last_line(text):
    return text.strip().splitlines()[-1]


def test_stage_one_writes_checkpoints_and_history(trained_run):
    rows = history_rows(trained_run)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2")]
    assert list(rows[0]) == ["stage", "epoch", "train_loss", "test_loss", "lr", "seconds"]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    model, checkpoint = load_checkpoint(os.path.join(trained_run, "last.pt"))
    assert {
        "epoch",
        "model_state_dict",
        "optimizer_state_dicts",
        "scheduler_state_dict",
        "loss",
        "stage",
        "args",
        "history",
    } <= set(checkpoint)
    assert checkpoint["history"] == [
        {key: int(value) if key in ("stage", "epoch") else value for key, value in row.items()}
        for row in rows
    ]
    assert checkpoint["epoch"] == 2 and checkpoint["stage"] == 1
    assert isinstance(checkpoint["args"], dict) and checkpoint["args"]["epochs"] == 2
    best = min(float(r["test_loss"]) for r in rows)
    _, best_checkpoint = load_checkpoint(os.path.join(trained_run, "best.pt"))
    assert f"{best_checkpoint['loss']:.7f}" == f"{best:.7f}"


def test_evaluate_reproduces_the_saved_test_loss(trained_run, tiny_mnist, capsys):
    checkpoint_path = os.path.join(trained_run, "best.pt")
    assert evaluate.main([checkpoint_path, "--data-dir", tiny_mnist, *CPU]) == 0
    printed = last_line(capsys.readouterr().out)
    _, checkpoint = load_checkpoint(checkpoint_path)
    assert float(printed.split("=")[1]) == pytest.approx(checkpoint["loss"], abs=1e-7)


def test_stage_two_starts_from_stage_one_weights_with_fresh_optimizer(
    trained_run, tiny_mnist, tmp_path, capsys
):
    out_dir = str(tmp_path)
    code = train.main(
        [
            "--stage",
            "2",
            "--resume",
            os.path.join(trained_run, "best.pt"),
            "--epochs",
            "1",
            "--data-dir",
            tiny_mnist,
            "--out-dir",
            out_dir,
            "--batch-size",
            "32",
            *CPU,
        ]
    )
    assert code == 0
    assert "fresh optimizer" in capsys.readouterr().out
    rows = history_rows(out_dir)
    # The stage-1 rows travel along, so the curves show both stages.
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1")]
    stage_two_lr = train.STAGE_LR[2]
    assert float(rows[-1]["lr"]) == pytest.approx(stage_two_lr)
    _, checkpoint = load_checkpoint(os.path.join(out_dir, "last.pt"))
    assert checkpoint["stage"] == 2 and checkpoint["epoch"] == 1
    for state in checkpoint[
        "optimizer_state_dicts"
    ]:  # Muon's and AdamW's: one lr for every parameter
        assert all(group["lr"] == pytest.approx(stage_two_lr) for group in state["param_groups"])


def test_stage_two_in_the_same_folder_keeps_the_stage_one_checkpoint(
    trained_run, tiny_mnist, tmp_path
):
    out_dir = str(tmp_path / "run")
    shutil.copytree(trained_run, out_dir)
    stage_one = {
        name: open(os.path.join(out_dir, name), "rb").read() for name in ("best.pt", "last.pt")
    }
    assert (
        train.main(
            [
                "--stage",
                "2",
                "--resume",
                os.path.join(out_dir, "best.pt"),
                "--epochs",
                "1",
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                out_dir,
                "--subset",
                "64",
                *CPU,
            ]
        )
        == 0
    )
    for name, content in stage_one.items():
        assert open(os.path.join(out_dir, f"stage1_{name}"), "rb").read() == content
    assert load_checkpoint(os.path.join(out_dir, "best.pt"))[1]["stage"] == 2


def run_stage_one(tiny_mnist, out_dir, epochs=3, extra=()):
    return train.main(
        [
            "--data-dir",
            tiny_mnist,
            "--out-dir",
            out_dir,
            "--epochs",
            str(epochs),
            "--batch-size",
            "32",
            "--seed",
            "5",
            "--subset",
            "160",
            *CPU,
            *extra,
        ]
    )


def test_resume_continues_exactly_where_it_stopped(tiny_mnist, tmp_path):
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    assert run_stage_one(tiny_mnist, straight, epochs=4) == 0
    assert run_stage_one(tiny_mnist, interrupted, epochs=2) == 0
    assert (
        run_stage_one(
            tiny_mnist,
            interrupted,
            epochs=4,
            extra=["--resume", os.path.join(interrupted, "last.pt")],
        )
        == 0
    )
    columns = ("stage", "epoch", "train_loss", "test_loss", "lr")
    expected = [[row[c] for c in columns] for row in history_rows(straight)]
    assert [[row[c] for c in columns] for row in history_rows(interrupted)] == expected
    a, _ = load_checkpoint(os.path.join(straight, "last.pt"))
    b, _ = load_checkpoint(os.path.join(interrupted, "last.pt"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_visualize_writes_every_picture(trained_run, tiny_mnist, tmp_path):
    out_dir = str(tmp_path / "img")
    assert (
        visualize.main(
            [
                "--checkpoint",
                os.path.join(trained_run, "best.pt"),
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                out_dir,
            ]
        )
        == 0
    )
    names = [
        "reconstructions.png",
        "homotopy_1.png",
        "homotopy_2.png",
        "homotopy_3.png",
        "curves.png",
        "latent_pca.png",
        "per_digit_error.png",
        "worst.png",
        "samples.png",
        "interpolation_grid.png",
    ]
    assert sorted(os.listdir(out_dir)) == sorted(names)
    # Digits are 28 pixels with 2 pixels of padding: (columns, rows) of each grid.
    grids = {
        "reconstructions.png": (32, 2),
        "homotopy_1.png": (12, 2),
        "worst.png": (16, 2),
        "samples.png": (8, 4),
        "interpolation_grid.png": (10, 10),
    }
    for name in names:
        picture = np.asarray(Image.open(os.path.join(out_dir, name)).convert("L"), dtype=float)
        assert picture.std() > 10, f"{name} is blank"
        if name in grids:
            columns, rows = grids[name]
            assert picture.shape == (rows * 30 + 2, columns * 30 + 2), name


def test_evaluate_metrics_agree_with_a_direct_computation(trained_run, tiny_mnist, capsys):
    checkpoint_path = os.path.join(trained_run, "best.pt")
    assert evaluate.main([checkpoint_path, "--data-dir", tiny_mnist, *CPU]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    printed = dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)
    names = [
        "test_psnr",
        "test_mse_sum",
        "warped_test_mse",
        "knn_accuracy",
        *[f"test_mse_digit_{d}" for d in range(10)],
        "test_mse",
    ]
    assert list(printed) == names and lines[-1].startswith("test_mse=")

    model, _ = load_checkpoint(checkpoint_path)
    model.eval()
    train_images, train_labels = data.load_split(tiny_mnist, train=True)
    test_images, test_labels = data.load_split(tiny_mnist, train=False)
    x = test_images.float()[:, None] / 255
    with torch.no_grad():
        reconstruction, test_codes = model(x)
        train_codes = model(train_images.float()[:, None] / 255)[1]
    per_image = ((reconstruction - x) ** 2).flatten(1).mean(1).double()
    assert float(printed["test_mse"]) == pytest.approx(per_image.mean().item(), abs=1e-7)
    assert float(printed["test_mse_sum"]) == pytest.approx(per_image.mean().item() * 784, abs=1e-5)
    assert float(printed["test_psnr"]) == pytest.approx(
        (-10 * per_image.log10()).mean().item(), abs=1e-3
    )
    for digit in range(10):
        expected = per_image[test_labels == digit].mean().item()
        assert float(printed[f"test_mse_digit_{digit}"]) == pytest.approx(expected, abs=1e-7)
    correct = 0
    for code, label in zip(test_codes, test_labels):
        distances = ((train_codes - code) ** 2).sum(1)
        votes = torch.bincount(train_labels[distances.argsort()[:5]], minlength=10)
        correct += int(votes.argmax() == label)
    assert float(printed["knn_accuracy"]) == pytest.approx(correct / len(test_labels), abs=1e-4)
    warped = evaluate.warped_copy(test_images)
    assert warped.dtype == torch.uint8 and not torch.equal(warped, test_images)
    assert torch.equal(warped, evaluate.warped_copy(test_images)), (
        "the warped test set must be fixed"
    )
    xw = warped.float()[:, None] / 255
    with torch.no_grad():
        warped_mse = ((model(xw)[0] - xw) ** 2).mean().item()
    assert float(printed["warped_test_mse"]) == pytest.approx(warped_mse, abs=1e-7)


def reference_style_checkpoint(path, numpy_module_name):
    """A checkpoint as the reference project saved it: five keys, `loss` a numpy float64."""
    model = AutoEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    torch.save(
        {
            "epoch": 80,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "loss": np.float64(0.0025443),
        },
        path,
    )
    # numpy 1 pickles its scalars as numpy.core.*, numpy 2 as numpy._core.*.
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(buffer, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename.endswith(
                "data.pkl"
            ):  # the name this numpy pickled under, made the one asked
                content = content.replace(
                    np.float64(0).__reduce__()[0].__module__.encode(), numpy_module_name.encode()
                )
            target.writestr(item, content)
    with open(path, "wb") as file:
        file.write(buffer.getvalue())
    return model


@pytest.mark.parametrize("numpy_module_name", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_reference_checkpoint_loads_with_weights_only(
    tmp_path, numpy_module_name, tiny_mnist, capsys
):
    path = str(tmp_path / "best_model.pth")
    original = reference_style_checkpoint(path, numpy_module_name)
    assert numpy_module_name.encode() in zipfile.ZipFile(path).read("best_model/data.pkl")
    model, checkpoint = load_checkpoint(path)
    assert float(checkpoint["loss"]) == pytest.approx(0.0025443)
    for x, y in zip(model.state_dict().values(), original.state_dict().values()):
        assert torch.equal(x, y)
    assert evaluate.main([path, "--data-dir", tiny_mnist, *CPU]) == 0
    assert last_line(capsys.readouterr().out).startswith("test_mse=")
    out_dir = os.path.join(os.path.dirname(path), "stage2")
    assert (
        train.main(
            [
                "--stage",
                "2",
                "--resume",
                path,
                "--epochs",
                "1",
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                out_dir,
                "--subset",
                "64",
                *CPU,
            ]
        )
        == 0
    )


def test_weight_average_update():
    model, average = AutoEncoder(), AutoEncoder()
    start = {name: value.clone() for name, value in average.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
        model.encoder[0][1].num_batches_tracked += 5
    train.update_average(
        list(zip(average.state_dict().values(), model.state_dict().values())), decay=0.9
    )
    for name, value in average.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * start[name] + 0.1 * model.state_dict()[name]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    assert average.encoder[0][1].num_batches_tracked == 5


def test_muon_takes_the_inner_kernels_adamw_the_rest_and_decay_shrinks_the_kernels_only():
    model = AutoEncoder()
    before = {name: value.clone() for name, value in model.named_parameters()}
    muon, adamw = train.make_optimizers(
        model, train.parse_args(["--lr", "0.1", "--weight-decay", "0.5"])
    )
    on_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in on_muon}
    assert names == {
        "encoder.1.0.weight",
        "encoder.2.0.weight",
        "encoder.3.weight",
        "decoder.1.weight",
        "decoder.2.1.weight",
        "decoder.3.1.weight",
    }
    assert type(adamw) is torch.optim.AdamW
    assert len(on_muon) + sum(len(group["params"]) for group in adamw.param_groups) == len(
        list(model.parameters())
    )
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)  # so that only the decay moves them
    muon.step()
    adamw.step()
    for name, value in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if value.dim() > 1 else 1.0
        torch.testing.assert_close(value, before[name] * factor, msg=name)


def test_a_non_finite_loss_is_named_by_its_batch(tiny_mnist):
    args = train.parse_args(["--batch-size", "32", "--device", "cpu"])
    images = data.load_split(tiny_mnist, train=True)[0]
    model = AutoEncoder()
    run = train.new_run(args, model, torch.device("cpu"))
    train.resume(run, args, {})
    calls = []
    forward = model.forward

    def fifth_batch_is_nan(batch):
        calls.append(len(calls) + 1)
        reconstruction, latent = forward(batch)
        return (
            (reconstruction * float("nan"), latent) if len(calls) == 5 else (reconstruction, latent)
        )

    model.forward = fifth_batch_is_nan
    with pytest.raises(train.NonFiniteLoss, match=r"^training batch 5$"):
        train.train_epoch(run, images, args, epoch=1)


def test_a_stage_stops_once_the_lr_falls_below_min_lr(tiny_mnist, tmp_path, capsys):
    out_dir = str(tmp_path)
    # At lr 1e-6 nothing is learnt: epoch 1 sets the best, epochs 2 and 3 gain nothing, so with
    # patience 1 the lr halves after epoch 3, below --min-lr.
    flags = [
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        out_dir,
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--subset",
        "64",
        "--lr",
        "1e-6",
        "--ema-decay",
        "0",
        *CPU,
    ]
    assert train.main([*flags, "--min-lr", "6e-7"]) == 0
    assert [row["epoch"] for row in history_rows(out_dir)] == ["1", "2", "3"]
    assert "stopped after epoch 3" in capsys.readouterr().out
    assert (
        train.main([*flags, "--min-lr", "6e-7", "--resume", os.path.join(out_dir, "last.pt")]) == 0
    )
    assert "stopped after epoch 3" in capsys.readouterr().out
    assert [row["epoch"] for row in history_rows(out_dir)] == ["1", "2", "3"]
    assert train.main([*flags, "--min-lr", "0", "--resume", os.path.join(out_dir, "last.pt")]) == 0
    assert [row["epoch"] for row in history_rows(out_dir)] == ["1", "2", "3", "4", "5", "6"]


def test_weights_only_copy_is_small_and_serves_every_script(trained_run, tiny_mnist, tmp_path):
    weights = str(tmp_path / "autoencoder.pt")  # as results/run_mnist.sh writes the shipped one
    best = torch.load(os.path.join(trained_run, "best.pt"), weights_only=True)
    torch.save({key: best[key] for key in ("model_state_dict", "epoch", "stage", "loss")}, weights)
    assert os.path.getsize(weights) < 1_000_000
    model, _ = load_checkpoint(weights)
    for x, y in zip(model.state_dict().values(), best["model_state_dict"].values()):
        assert torch.equal(x, y)
    out_dir = str(tmp_path / "stage2")
    assert (
        train.main(
            [
                "--stage",
                "2",
                "--resume",
                weights,
                "--epochs",
                "1",
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                out_dir,
                "--batch-size",
                "32",
                *CPU,
            ]
        )
        == 0
    )
    assert (
        visualize.main(
            ["--checkpoint", weights, "--data-dir", tiny_mnist, "--out-dir", str(tmp_path / "img")]
        )
        == 0
    )


def test_fashion_mnist_metrics_are_named_by_class(trained_run, tmp_path, capsys):
    write_mnist(str(tmp_path), folder="FashionMNIST")
    assert (
        evaluate.main(
            [
                os.path.join(trained_run, "best.pt"),
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    names = [line.split("=")[0] for line in capsys.readouterr().out.splitlines()]
    assert names[4:-1] == [f"test_mse_class_{label}" for label in range(10)]


def test_the_curves_legend_names_the_runs(trained_run, tiny_mnist, tmp_path, monkeypatch):
    history = os.path.join(trained_run, "history.csv")
    figure = visualize.draw_curves([history, history], ["this repo", "the reference"])
    legend = [text.get_text() for text in figure.axes[2].get_legend().get_texts()]
    assert legend == ["this repo", "the reference"]
    figures, draw_curves = [], visualize.draw_curves

    def kept(*args):
        figures.append(draw_curves(*args))
        return figures[-1]

    monkeypatch.setattr(visualize, "draw_curves", kept)
    flags = ["--data-dir", tiny_mnist, "--device", "cpu", "--out-dir", str(tmp_path / "img")]
    assert visualize.main(["--checkpoint", os.path.join(trained_run, "best.pt"), *flags]) == 0
    legend = figures[-1].axes[2].get_legend().get_texts()
    assert [text.get_text() for text in legend] == [os.path.basename(trained_run)]


@pytest.mark.slow
def test_bench_times_both_loops_as_processes_for_each_stage(tiny_mnist, capsys):
    bench = importlib.import_module("results.bench")
    assert bench.main(["--data-dir", tiny_mnist, "--pairs", "2"]) == 0
    output = capsys.readouterr().out
    row = r"stage (\d): plain loop +([\d.]+) s +train.py --epochs 1 +([\d.]+) s +ratio ([\d.]+)x"
    rows = re.findall(row, output)
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows), output


def test_profile_step_times_each_part_of_a_step(tiny_mnist, capsys):
    profile = importlib.import_module("results.profile_step")
    with torch.random.fork_rng():
        assert profile.main(["--data-dir", tiny_mnist, "--steps", "3", "--device", "cpu"]) == 0
    rows = dict(re.findall(r"^(\S.*?) +([\d.]+)(?: +[\d.]+%|$)", capsys.readouterr().out, re.M))
    parts = ["forward encoder.0.0", "backward decoder.1", "step Muon", "step AdamW", "casts"]
    assert all(any(row.startswith(part) for row in rows) for part in parts), rows
    sums = ["forward, convolutions", "forward, other layers", "backward, convolutions"]
    assert all(0 < float(rows[part]) < float(rows["the whole step"]) for part in sums), rows


def test_bench_ends_with_one_line_for_missing_data(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    bench = importlib.import_module("results.bench")
    assert bench.main(["--data-dir", str(tmp_path / "nothing")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "nothing" in line
