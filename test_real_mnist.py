"""End-to-end runs on a slice of the real MNIST; they run with --run-slow when MNIST_DATA_DIR
names its root.

    MNIST_DATA_DIR=../shared/data python -m pytest -q --run-slow test_real_mnist.py
"""

import csv
import os

import pytest

import data
import evaluate
import train
import visualize

DATA_DIR = os.environ.get("MNIST_DATA_DIR")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA_DIR, reason="set MNIST_DATA_DIR to the folder holding MNIST/raw/"),
]
SUBSET = "10000"


def printed_metrics(text):
    return dict(
        line.split("=", 1) for line in text.strip().splitlines() if "=" in line and " " not in line
    )


def test_both_stages_evaluation_and_pictures_on_real_mnist(tmp_path, capsys):
    out_dir = str(tmp_path)
    common = ["--data-dir", DATA_DIR, "--out-dir", out_dir, "--subset", SUBSET, "--device", "cpu"]
    assert train.main(["--stage", "1", "--epochs", "3", *common]) == 0
    assert (
        train.main(
            ["--stage", "2", "--epochs", "1", "--resume", os.path.join(out_dir, "best.pt"), *common]
        )
        == 0
    )
    with open(os.path.join(out_dir, "history.csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("1", "1"),
        ("1", "2"),
        ("1", "3"),
        ("2", "1"),
    ]
    stage_one = [float(r["test_loss"]) for r in rows[:3]]
    assert stage_one == sorted(stage_one, reverse=True)
    # Three short epochs already halve the error of drawing nothing (all-black images).
    test_images = data.to_float(data.load_split(DATA_DIR, train=False)[0][: int(SUBSET)])
    assert stage_one[-1] < 0.5 * test_images.pow(2).mean().item()

    capsys.readouterr()
    assert (
        evaluate.main([os.path.join(out_dir, "best.pt"), "--data-dir", DATA_DIR, "--device", "cpu"])
        == 0
    )
    output = capsys.readouterr().out
    metrics = printed_metrics(output)
    assert output.strip().splitlines()[-1].startswith("test_mse=")
    assert float(metrics["test_mse"]) == pytest.approx(float(rows[-1]["test_loss"]), abs=2e-7)
    assert float(metrics["knn_accuracy"]) > 0.7
    assert 0 < float(metrics["warped_test_mse"]) != float(metrics["test_mse"])

    images = os.path.join(out_dir, "images")
    assert (
        visualize.main(
            [
                "--checkpoint",
                os.path.join(out_dir, "best.pt"),
                "--data-dir",
                DATA_DIR,
                "--out-dir",
                images,
            ]
        )
        == 0
    )
    assert len(os.listdir(images)) == 10
