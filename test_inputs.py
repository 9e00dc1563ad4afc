"""Odd pictures, folders, flags and pipes, as users bring them: each ends with one line naming
the file or flag (status 2), or the work is done right; never a traceback."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate
import pictures
import train
import visualize
from conftest import assert_clean_failure, synthetic_digits

HERE = os.path.dirname(os.path.abspath(__file__))


def save_digits(folder, count, seed=12, size=(40, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    for index, digit in enumerate(synthetic_digits(count, seed=seed)[0]):
        Image.fromarray((255 - digit).numpy(), mode="L").resize(size).save(folder / f"{index}.png")


def test_a_16_bit_picture_is_framed_like_its_8_bit_twin(tmp_path):
    digit = 255 - synthetic_digits(1, seed=5)[0][0].numpy().astype(np.uint16)
    Image.fromarray(digit.astype(np.uint8)).resize((56, 56)).save(tmp_path / "eight.png")
    wide = (
        np.asarray(Image.open(tmp_path / "eight.png"), dtype=np.uint16) * 257
    )  # 0..255 -> 0..65535
    Image.fromarray(wide).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    eight, sixteen = (
        pictures.read_picture(str(tmp_path / name)) for name in ("eight.png", "sixteen.png")
    )
    assert sixteen is not None and torch.equal(eight, sixteen)


def test_a_picture_past_pillows_size_limit_ends_with_one_line(
    tmp_path, monkeypatch, trained_run, cli
):
    save_digits(tmp_path / "big", 1)
    monkeypatch.setattr(
        Image, "MAX_IMAGE_PIXELS", 100
    )  # 40x40 is then past twice the limit, as a bomb is
    result = cli(evaluate, os.path.join(trained_run, "best.pt"), "--images", tmp_path / "big")
    assert_clean_failure(result, "0.png", "shrink")


def test_a_link_to_nothing_is_skipped_like_any_file_that_is_no_picture(tmp_path, capsys):
    save_digits(tmp_path / "mine", 3)
    os.symlink(tmp_path / "gone.png", tmp_path / "mine" / "broken.png")
    folder = str(tmp_path / "mine")
    images, paths = pictures.read_pictures(pictures.picture_paths([folder]), folder=folder)
    assert len(images) == 3
    assert "skipped 1 files that are not images (e.g. broken.png)" in capsys.readouterr().out


def test_a_name_the_terminal_cannot_encode_is_printed_escaped(tmp_path, trained_run):
    folder = tmp_path / "odd"
    save_digits(folder, 2)
    os.rename(
        folder / "0.png", os.path.join(os.fsencode(folder), b"caf\xe9.png")
    )  # Latin-1, not UTF-8
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "evaluate.py"),
            os.path.join(trained_run, "best.pt"),
            "--images",
            str(folder),
            "--device",
            "cpu",
        ],
        capture_output=True,
        cwd=HERE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"caf\\udce9.png mse=" in result.stdout and b"Traceback" not in result.stderr


@pytest.mark.parametrize("present", ["train", "test"])
def test_one_split_folder_without_the_other_is_refused(present, tmp_path, cli):
    save_digits(tmp_path / "mine" / present / "a", 70)
    result = cli(
        train,
        "--dataset",
        "images",
        "--data-dir",
        tmp_path / "mine",
        "--out-dir",
        tmp_path / "run",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert_clean_failure(
        result, f"has {present}/ but no {'test' if present == 'train' else 'train'}/"
    )
    assert not os.path.exists(tmp_path / "run" / "history.csv")


@pytest.mark.parametrize("count", [1, 2, 10])
def test_visualize_with_too_few_pictures_names_what_it_skipped_and_draws_the_rest(
    count, tmp_path, trained_run, cli
):
    for index in range(count):  # one picture per class
        save_digits(tmp_path / "mine" / str(index), 1, seed=20 + index)
    out_dir = tmp_path / "drawn"
    result = cli(
        visualize,
        "--checkpoint",
        os.path.join(trained_run, "best.pt"),
        "--dataset",
        "images",
        "--data-dir",
        tmp_path / "mine",
        "--out-dir",
        out_dir,
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "Traceback" not in result.stderr
        and "skipped interpolation_grid.png: it needs 4" in result.stderr
    )
    assert "reconstructions.png" in os.listdir(out_dir)
    if count <= 2:  # a tenth, at least one, is kept for testing
        assert f"skipped samples.png: it needs 2 images, there are {count - 1}" in result.stderr


def test_visualize_will_not_write_among_the_pictures_it_reads(
    tmp_path, trained_run, cli, monkeypatch
):
    save_digits(tmp_path / "images", 20)
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir("images"))
    result = cli(
        visualize,
        "--checkpoint",
        os.path.join(trained_run, "best.pt"),
        "--dataset",
        "images",
        "--data-dir",
        "images",
    )
    assert result.returncode == 2 and "--out-dir" in result.stderr and "--data-dir" in result.stderr
    assert sorted(os.listdir("images")) == before


def test_visualize_refuses_a_checkpoint_with_a_nan_weight(tmp_path, trained_run, tiny_mnist, cli):
    checkpoint = torch.load(os.path.join(trained_run, "best.pt"), weights_only=True)
    checkpoint["model_state_dict"]["encoder.3.weight"][0, 0, 0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "diverged.pt")
    result = cli(
        visualize,
        "--checkpoint",
        tmp_path / "diverged.pt",
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        tmp_path / "drawn",
    )
    assert_clean_failure(result, "diverged.pt", "NaN")
    result = cli(evaluate, tmp_path / "diverged.pt", "--data-dir", tiny_mnist)
    assert result.returncode == 0 and result.stdout.strip().endswith("test_mse=nan")


def test_a_history_with_rows_that_are_not_numbers(run_dir, tiny_mnist, tmp_path, cli):
    with open(os.path.join(run_dir, "history.csv"), "a") as file:
        file.write("stage,epoch,oops\nnot,a,row\n1,3,0.01")  # junk, and a last row cut short
    result = cli(
        train,
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        run_dir,
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--resume",
        os.path.join(run_dir, "last.pt"),
    )
    assert result.returncode == 0, result.stderr  # the history is rewritten from the checkpoint's
    assert open(os.path.join(run_dir, "history.csv")).read().count("\n1,") == 3
    with open(os.path.join(run_dir, "history.csv"), "a") as file:
        file.write("1,4,0.01")
    result = cli(
        visualize,
        "--checkpoint",
        os.path.join(run_dir, "best.pt"),
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        tmp_path / "drawn",
    )
    assert (
        result.returncode == 0
        and "skipped curves.png" in result.stderr
        and "line 5" in result.stderr
    )
    assert "Traceback" not in result.stderr and "reconstructions.png" in os.listdir(
        tmp_path / "drawn"
    )


def test_training_goes_on_when_nobody_reads_its_output(tiny_mnist, tmp_path):
    command = [
        sys.executable,
        "-u",
        os.path.join(HERE, "train.py"),
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        str(tmp_path),
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--device",
        "cpu",
    ]
    reader = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    process = subprocess.run(
        command, stdout=reader.stdin, stderr=subprocess.PIPE, cwd=HERE, timeout=120
    )
    reader.stdin.close()
    reader.wait()
    assert process.returncode == 0, process.stderr.decode()
    assert b"Traceback" not in process.stderr and b"BrokenPipe" not in process.stderr
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("number", data.STOP_SIGNALS)
def test_a_stop_signal_while_pictures_are_read_ends_with_one_line(number, tmp_path, trained_run,
                                                                  cli, monkeypatch):
    save_digits(tmp_path / "mine", 3)
    name = data.stop_name(number)

    def interrupted(*args):  # the signal arrives while a picture is read
        os.kill(os.getpid(), number)
        time.sleep(1)  # Python's handler runs first

    monkeypatch.setattr(pictures, "read_picture", interrupted)
    checkpoint = os.path.join(trained_run, "best.pt")
    assert_clean_failure(cli(evaluate, checkpoint, "--images", tmp_path / "mine"), name,
                         status=128 + number)
    assert_clean_failure(cli(visualize, "--checkpoint", checkpoint, "--images", tmp_path / "mine",
                             "--out-dir", tmp_path / "drawn"), name, status=128 + number)
    assert_clean_failure(cli(pictures, tmp_path / "mine", "--out-dir", tmp_path / "framed"), name,
                         status=128 + number)
    result = cli(train, "--dataset", "images", "--data-dir", tmp_path / "mine", "--out-dir",
                 tmp_path / "run", "--device", "cpu")
    assert_clean_failure(result, name, "nothing was written", status=128 + number)
    assert not os.path.exists(tmp_path / "run")
    assert signal.getsignal(number) is not None  # the handlers before the call are back
    pictures.read_folder.cache_clear()
