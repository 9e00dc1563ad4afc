"""Odd pictures, folders, flags and pipes, as users bring them: each ends with one line naming
the file or flag (status 2), or the work is done right; never a traceback."""

import os
import shutil
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


def test_visualize_writes_only_its_own_pngs_and_keeps_them_whole_on_a_full_disk(
    tmp_path, trained_run, tiny_mnist, cli, monkeypatch
):
    checkpoint = os.path.join(trained_run, "best.pt")
    out_dir = tmp_path / "images"
    save_digits(tmp_path / "mine", 3)
    flags = ["--checkpoint", checkpoint, "--images", tmp_path / "mine", "--out-dir", out_dir]
    assert cli(visualize, *flags).returncode == 0
    first = (out_dir / "pictures.png").read_bytes()
    assert pictures.made_by(str(out_dir / "pictures.png"), "visualize.py")
    assert cli(visualize, *flags).returncode == 0  # its own file: written over
    # A full disk: the picture before stays whole, and the line names the file.
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space")))
    result = cli(visualize, *flags)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert_clean_failure(result, "pictures.png", "No space", status=4)
    assert (out_dir / "pictures.png").read_bytes() == first
    assert [name for name in os.listdir(out_dir)] == ["pictures.png"]  # no temporary file left
    # A photo of the user's that is named like one of visualize.py's pictures is never replaced.
    (out_dir / "pictures.png").write_bytes((tmp_path / "mine" / "0.png").read_bytes())
    result = cli(visualize, *flags)
    assert_clean_failure(result, "pictures.png", "not written by visualize.py", "Software")
    assert (out_dir / "pictures.png").read_bytes() == (tmp_path / "mine" / "0.png").read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    for name in ("curves.png", "worst.png"):  # the data set's pictures: the same rule
        Image.open(tmp_path / "mine" / "1.png").save(other / name)
        result = cli(visualize, "--checkpoint", checkpoint, "--data-dir", tiny_mnist, "--out-dir",
                     other, "--device", "cpu")
        assert_clean_failure(result, name, "not written by visualize.py")
        os.remove(other / name)


def test_pictures_py_writes_whole_marked_files_never_into_its_input_nor_over_others(
    tmp_path, cli, monkeypatch
):
    save_digits(tmp_path / "mine", 3)
    assert_clean_failure(cli(pictures, tmp_path / "mine", "--out-dir", tmp_path / "mine" / "x"),
                         "--out-dir", "among the pictures read")
    assert not (tmp_path / "mine" / "x").exists()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space")))
    result = cli(pictures, tmp_path / "mine", "--out-dir", tmp_path / "framed")
    assert_clean_failure(result, "framed", "0.png", "No space", status=4)
    assert os.listdir(tmp_path / "framed") == []  # no half-written or empty PNG
    monkeypatch.undo()
    assert cli(pictures, tmp_path / "mine", "--out-dir", tmp_path / "framed").returncode == 0
    assert pictures.made_by(str(tmp_path / "framed" / "0.png"), "pictures.py")
    user_file = (tmp_path / "mine" / "1.png").read_bytes()
    (tmp_path / "framed" / "1.png").write_bytes(user_file)  # not pictures.py's
    result = cli(pictures, tmp_path / "mine", "--out-dir", tmp_path / "framed", "--overwrite")
    assert_clean_failure(result, "1.png", "not written by pictures.py")
    assert (tmp_path / "framed" / "1.png").read_bytes() == user_file


def test_a_picture_format_pillow_cannot_open_is_named_with_those_it_can(tmp_path, trained_run,
                                                                        cli):
    save_digits(tmp_path / "phone", 2)
    (tmp_path / "phone" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic" + bytes(100))
    result = cli(evaluate, os.path.join(trained_run, "best.pt"), "--images", tmp_path / "phone")
    assert_clean_failure(result, "IMG_0001.HEIC", "cannot open HEIC", "PNG", "JPEG")


@pytest.mark.parametrize("labelled", [False, True])
def test_visualize_on_identical_pictures_draws_or_names_every_picture(labelled, tmp_path,
                                                                      trained_run, cli):
    digit = synthetic_digits(1, seed=3)[0][0]
    for index in range(50):  # a tenth, 5, kept for testing
        folder = tmp_path / "same" / (str(index % 3) if labelled else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((255 - digit).numpy()).resize((48, 48)).save(folder / f"{index}.png")
    result = cli(visualize, "--checkpoint", os.path.join(trained_run, "best.pt"), "--dataset",
                 "images", "--data-dir", tmp_path / "same", "--out-dir", tmp_path / "drawn")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    drawn = set(os.listdir(tmp_path / "drawn"))
    assert {"samples.png", "reconstructions.png", "interpolation_grid.png", "worst.png"} <= drawn
    assert ("latent_pca.png" in drawn) == labelled


def test_standard_streams_closed_at_the_start_change_nothing(tiny_mnist, tmp_path):
    command = [sys.executable, os.path.join(HERE, "train.py"), "--data-dir", tiny_mnist,
               "--out-dir", str(tmp_path / "run"), "--epochs", "2", "--device", "cpu"]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, cwd=HERE,
                            preexec_fn=lambda: [os.close(fd) for fd in (0, 1, 2)], timeout=120)
    assert result.returncode == 0
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert open(tmp_path / "run" / ".lock").read().strip().isdigit()  # nothing else written there


def test_mnist_with_a_stale_copy_of_torchvisions_old_layout_reads_the_raw_files(
    tiny_mnist, tmp_path, trained_run, cli
):
    shutil.copytree(tiny_mnist, tmp_path / "data")
    processed = tmp_path / "data" / "MNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):  # empty: a download cut short, long ago
        (processed / name).write_bytes(b"")
    result = cli(evaluate, os.path.join(trained_run, "best.pt"), "--data-dir", tmp_path / "data",
                 "--device", "cpu")
    assert result.returncode == 0, result.stderr
    expected = cli(evaluate, os.path.join(trained_run, "best.pt"), "--data-dir", tiny_mnist,
                   "--device", "cpu")
    assert result.stdout == expected.stdout


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module.", "module._orig_mod."])
def test_a_checkpoint_of_a_compiled_or_data_parallel_model_loads(prefix, trained_run, tiny_mnist,
                                                                 tmp_path, cli):
    checkpoint = torch.load(os.path.join(trained_run, "best.pt"), weights_only=True)
    state = checkpoint["model_state_dict"]
    checkpoint["model_state_dict"] = {prefix + key: value for key, value in state.items()}
    torch.save(checkpoint, tmp_path / "wrapped.pt")
    wrapped = cli(evaluate, tmp_path / "wrapped.pt", "--data-dir", tiny_mnist, "--device", "cpu")
    plain = cli(evaluate, os.path.join(trained_run, "best.pt"), "--data-dir", tiny_mnist,
                "--device", "cpu")
    assert wrapped.returncode == 0 and wrapped.stdout == plain.stdout


def test_a_stage_started_from_a_run_on_other_data_says_so(trained_run, tmp_path, cli):
    from conftest import write_mnist

    write_mnist(str(tmp_path), folder="FashionMNIST")
    checkpoint = os.path.join(trained_run, "best.pt")  # trained on MNIST
    result = cli(train, "--stage", "2", "--resume", checkpoint, "--dataset", "fashion-mnist",
                 "--data-dir", tmp_path, "--out-dir", tmp_path / "run", "--epochs", "1",
                 "--device", "cpu")
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "other data" in warning and "--dataset (was mnist)" in warning
