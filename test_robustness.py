"""Crashes, interrupts and bad input, as a user meets them.

Each bad input must end with exit status 2, one line on stderr that names the file or
flag, and every checkpoint left as it was. Most cases call a script's main(argv) in
this process (an exception would fail the test); signals, kill -9 and the folder lock
are tested on real processes, since the process boundary is what they are about.
"""

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

import data
import evaluate
import train
import visualize
from conftest import assert_clean_failure, snapshot, write_idx

HERE = os.path.dirname(os.path.abspath(__file__))


def bad_checkpoints(folder, good_checkpoint):
    """name -> (path, word the error message must contain)."""
    paths = {}
    empty = os.path.join(folder, "empty.pt")
    open(empty, "wb").close()
    paths["empty"] = (empty, "empty.pt")
    truncated = os.path.join(folder, "truncated.pt")
    content = open(good_checkpoint, "rb").read()
    with open(truncated, "wb") as file:
        file.write(content[: len(content) // 2])
    paths["truncated"] = (truncated, "truncated.pt")
    png = os.path.join(folder, "picture.png")
    with open(png, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + bytes(200))
    paths["png"] = (png, "picture.png")
    checkpoint = torch.load(good_checkpoint, weights_only=True)
    checkpoint["model_state_dict"]["encoder.1.0.weight"] = torch.zeros(48, 16, 3, 3)
    other_architecture = os.path.join(folder, "wide.pt")
    torch.save(checkpoint, other_architecture)
    paths["other architecture"] = (other_architecture, "encoder.1.0.weight")
    no_weights = os.path.join(folder, "no_weights.pt")
    torch.save({"epoch": 3, "loss": 0.1}, no_weights)
    paths["no model_state_dict"] = (no_weights, "model_state_dict")
    paths["missing"] = (os.path.join(folder, "nowhere.pt"), "nowhere.pt")
    paths["a folder"] = (folder, folder)
    return paths


def test_bad_resume_files_fail_cleanly(run_dir, tiny_mnist, tmp_path, cli):
    before = snapshot(run_dir)
    for name, (path, word) in bad_checkpoints(
        str(tmp_path), os.path.join(run_dir, "best.pt")
    ).items():
        result = cli(
            train,
            "--resume",
            path,
            "--data-dir",
            tiny_mnist,
            "--out-dir",
            run_dir,
            "--epochs",
            "1",
            "--device",
            "cpu",
        )
        assert_clean_failure(result, word)
    assert snapshot(run_dir) == before


def test_a_checkpoint_of_the_earlier_layout_says_what_to_do(run_dir, tiny_mnist, tmp_path, cli):
    # Before muon.py used torch.optim.AdamW, one optimizer held every parameter.
    checkpoint = torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)
    checkpoint["optimizer_state_dict"] = checkpoint.pop("optimizer_state_dicts")[0]
    del checkpoint["history"]
    old = str(tmp_path / "old.pt")
    torch.save(checkpoint, old)
    flags = [
        "--data-dir",
        tiny_mnist,
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--resume",
        old,
    ]
    assert_clean_failure(cli(train, *flags, "--out-dir", tmp_path / "again"), "old.pt", "--stage 2")
    assert cli(train, *flags, "--stage", "2", "--out-dir", tmp_path / "stage2").returncode == 0


class RunsCode:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_runs_code_is_refused(run_dir, tiny_mnist, tmp_path, cli):
    marker = str(tmp_path / "code-ran")
    evil = str(tmp_path / "evil.pt")
    torch.save({"model_state_dict": RunsCode(marker)}, evil)
    assert not os.path.exists(marker)
    before = snapshot(run_dir)
    result = cli(
        train, "--resume", evil, "--data-dir", tiny_mnist, "--out-dir", run_dir, "--device", "cpu"
    )
    assert_clean_failure(result, "evil.pt")
    assert not os.path.exists(marker)
    result = cli(
        visualize, "--checkpoint", evil, "--data-dir", tiny_mnist, "--out-dir", tmp_path / "img"
    )
    assert_clean_failure(result, "evil.pt")
    assert_clean_failure(cli(evaluate, evil, "--data-dir", tiny_mnist), "evil.pt")
    assert not os.path.exists(marker)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--stage", "2"], "--resume"),
        (["--epochs", "-1"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-0.1"], "--lr"),
        (["--lr", "5e-6"], "--min-lr"),
        (["--weight-decay", "-0.01"], "--weight-decay"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--min-lr", "-1"], "--min-lr"),
        (["--ema-decay", "1"], "--ema-decay"),
        (["--seed", str(2**64)], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--subset", "0"], "--subset"),
    ],
)
def test_nonsense_flags_are_refused_before_anything_is_written(
    flags, word, tiny_mnist, tmp_path, cli
):
    out_dir = tmp_path / "run"
    result = cli(train, *flags, "--data-dir", tiny_mnist, "--out-dir", out_dir, "--device", "cpu")
    assert result.returncode == 2
    assert word in result.stderr.strip().splitlines()[-1]
    assert not out_dir.exists()


def corrupt_copy(tiny_mnist, tmp_path, damage):
    root = str(tmp_path / "broken")
    shutil.copytree(tiny_mnist, root)
    damage(os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte"))
    return root


def truncate(path):
    content = open(path, "rb").read()
    with open(path, "wb") as file:
        file.write(content[:5000])


def wrong_magic(path):
    content = bytearray(open(path, "rb").read())
    content[2] = 0x42
    with open(path, "wb") as file:
        file.write(content)


def wrong_shape(path):
    write_idx(path, torch.zeros(320, 14, 56, dtype=torch.uint8))


@pytest.mark.parametrize("damage", [truncate, wrong_magic, wrong_shape])
def test_corrupt_mnist_files_fail_cleanly(damage, tiny_mnist, run_dir, tmp_path, cli):
    broken = corrupt_copy(tiny_mnist, tmp_path, damage)
    before = snapshot(run_dir)
    result = cli(
        train, "--data-dir", broken, "--out-dir", run_dir, "--epochs", "1", "--device", "cpu"
    )
    assert_clean_failure(result, os.path.join(broken, "MNIST", "raw"), "corrupt")
    assert snapshot(run_dir) == before


def test_missing_data_that_cannot_be_downloaded_says_where_the_files_go(tmp_path, monkeypatch, cli):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    result = cli(
        train,
        "--data-dir",
        tmp_path / "nothing",
        "--out-dir",
        tmp_path / "out",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert_clean_failure(
        result,
        os.path.join(str(tmp_path / "nothing"), "MNIST", "raw"),
        "--data-dir",
        "could not be downloaded",
    )


def test_unwritable_out_dir_fails_before_training(tiny_mnist, tmp_path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli(
        train,
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        blocker / "out",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert_clean_failure(result, "--out-dir")
    assert "epoch" not in result.stdout.replace("epochs=", "")


def test_non_finite_loss_stops_with_status_3(run_dir, tiny_mnist, cli):
    before = snapshot(run_dir)
    # Even told to overwrite, a run that fails in its first epoch leaves the old run whole.
    result = cli(
        train,
        "--lr",
        "1e6",
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        run_dir,
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--overwrite",
    )
    assert_clean_failure(result, "epoch 1", "training batch", "--lr", status=3)
    assert snapshot(run_dir) == before


def test_visualize_without_checkpoint_fails_cleanly(tiny_mnist, tmp_path, cli):
    result = cli(
        visualize,
        "--checkpoint",
        tmp_path / "none.pt",
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        tmp_path / "img",
    )
    assert_clean_failure(result, "none.pt")


def test_visualize_without_history_skips_only_the_curves(run_dir, tiny_mnist, tmp_path, cli):
    os.remove(os.path.join(run_dir, "history.csv"))
    out_dir = tmp_path / "img"
    result = cli(
        visualize,
        "--checkpoint",
        os.path.join(run_dir, "best.pt"),
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        out_dir,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped curves.png" in result.stderr and "history.csv" in result.stderr
    assert os.path.exists(out_dir / "reconstructions.png")
    assert not os.path.exists(out_dir / "curves.png")


def test_a_finished_run_is_not_overwritten_unless_asked(run_dir, tiny_mnist, cli):
    before = snapshot(run_dir)
    result = cli(
        train, "--data-dir", tiny_mnist, "--out-dir", run_dir, "--epochs", "1", "--device", "cpu"
    )
    assert_clean_failure(
        result, run_dir, "history.csv", "--resume", "last.pt", "--overwrite", "--out-dir"
    )
    assert snapshot(run_dir) == before
    result = cli(
        train,
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        run_dir,
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--overwrite",
    )
    assert result.returncode == 0, result.stderr
    # Not on a terminal: no progress bar, one line for the epoch.
    assert "\r" not in result.stderr + result.stdout and result.stdout.count("epoch   1/1") == 1
    assert len(open(os.path.join(run_dir, "history.csv")).read().strip().splitlines()) == 2


def test_no_progress_bar_in_a_log_even_where_ipykernel_is_imported(monkeypatch):
    # Jupyter's client imports ipykernel (the notebook test does, in this process): only a
    # kernel's own stream is a cell.
    pytest.importorskip("ipykernel")
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))
    assert "ipykernel" in sys.modules and not data.progress_shown()
    sys.stderr.close()


@pytest.mark.parametrize("writes_before_full, epoch_kept", [(3, 1), (0, None)])
def test_full_disk_ends_with_status_4_and_keeps_what_was_written(
    writes_before_full, epoch_kept, tiny_mnist, tmp_path, monkeypatch, cli
):
    out_dir = str(tmp_path / "run")
    real_fsync, calls = os.fsync, []

    def fsync(
        descriptor,
    ):  # every fsync after the first `writes_before_full` fails as a full disk would
        calls.append(descriptor)
        if len(calls) > writes_before_full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    # Epoch 1 writes history.csv, best.pt and last.pt: three writes.
    result = cli(
        train,
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        out_dir,
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--device",
        "cpu",
    )
    assert_clean_failure(result, "history.csv", "No space left on device", status=4)
    if epoch_kept is None:
        assert "no epoch was saved" in result.stderr
        assert not os.path.exists(os.path.join(out_dir, "last.pt"))
    else:
        assert f"holds epoch {epoch_kept}, resume with: " in result.stderr
        # The command is main()'s own argv, not this process's sys.argv (pytest's).
        assert result.stderr.strip().endswith(
            f"--batch-size 32 --device cpu --resume {out_dir}/last.pt"
        )
        for name in ("best.pt", "last.pt"):
            assert torch.load(os.path.join(out_dir, name), weights_only=True)["epoch"] == epoch_kept
    assert not [name for name in os.listdir(out_dir) if name.startswith(".") and name != ".lock"], (
        "temp files left"
    )


def test_continuing_with_changed_flags_says_so_and_goes_on_with_them(run_dir, tiny_mnist, cli):
    result = cli(
        train,
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        run_dir,
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--lr",
        "0.001",
        "--resume",
        os.path.join(run_dir, "last.pt"),
    )
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert (
        "--batch-size (was 32)" in warning
        and "--lr (was 0.02)" in warning
        and "uninterrupted" in warning
    )
    assert "--weight-decay" not in warning
    checkpoint = torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["args"]["batch_size"] == 16
    last_row = open(os.path.join(run_dir, "history.csv")).read().strip().splitlines()[-1].split(",")
    assert last_row[:2] == ["1", "3"] and float(last_row[4]) == pytest.approx(0.001)


def test_a_run_stopped_before_its_first_epoch_says_the_same_command_continues(
    run_dir, tiny_mnist, monkeypatch, cli
):
    def interrupted(run, *args):
        run.stop.append(signal.SIGINT)
        raise data.Interrupted(signal.SIGINT)

    monkeypatch.setattr(train, "train_epoch", interrupted)
    result = cli(
        train,
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        run_dir,
        "--epochs",
        "4",
        "--device",
        "cpu",
        "--batch-size",
        "32",
        "--resume",
        os.path.join(run_dir, "last.pt"),
    )
    advice = "no epoch was saved; run the same command again"
    assert_clean_failure(result, "Ctrl-C", advice, status=130)


@pytest.mark.parametrize(
    "case",
    [
        "weights-only copy",
        "stage 2 resumed as stage 1",
        "stage 1 resumed from best.pt",
        "stage 2 again",
    ],
)
def test_no_command_but_a_continuation_writes_over_a_finished_run(case, run_dir, tiny_mnist, cli):
    """Each of these used to start at epoch 1 and write over the run's best.pt, last.pt or
    history.csv."""
    flags = [
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
    ]
    best, last = os.path.join(run_dir, "best.pt"), os.path.join(run_dir, "last.pt")
    if case == "weights-only copy":
        weights = os.path.join(run_dir, "autoencoder.pt")
        torch.save(
            {"model_state_dict": torch.load(best, weights_only=True)["model_state_dict"]}, weights
        )
        command, words = [*flags, "--resume", weights], ["--resume", "last.pt", "--overwrite"]
    elif case == "stage 1 resumed from best.pt":
        command, words = [*flags, "--resume", best], ["--resume", "last.pt", "--overwrite"]
    else:
        assert cli(train, *flags, "--stage", "2", "--resume", best).returncode == 0
        command = (
            [*flags, "--resume", last]
            if case == "stage 2 resumed as stage 1"
            else [*flags, "--stage", "2", "--resume", os.path.join(run_dir, "stage1_best.pt")]
        )
        words = ["--resume", "last.pt --stage 2", "--overwrite"]
    before = snapshot(run_dir)
    assert_clean_failure(cli(train, *command), run_dir, *words)
    assert snapshot(run_dir) == before


def test_stage_two_from_stage_ones_last_pt_keeps_both_stage_one_checkpoints(
    run_dir, tiny_mnist, cli
):
    stage_one = snapshot(run_dir)
    assert (
        cli(
            train,
            "--data-dir",
            tiny_mnist,
            "--out-dir",
            run_dir,
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--device",
            "cpu",
            "--stage",
            "2",
            "--resume",
            os.path.join(run_dir, "last.pt"),
        ).returncode
        == 0
    )
    after = snapshot(run_dir)
    assert (
        after["stage1_best.pt"] == stage_one["best.pt"]
        and after["stage1_last.pt"] == stage_one["last.pt"]
    )
    rows = after["history.csv"].decode().strip().splitlines()
    assert rows[1:] == stage_one["history.csv"].decode().strip().splitlines()[1:] + [rows[-1]]
    assert rows[-1].startswith("2,1,")


def start_training(tiny_mnist, out_dir, *extra):
    command = [
        sys.executable,
        os.path.join(HERE, "train.py"),
        *training_flags(tiny_mnist, out_dir),
        *extra,
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE
    )


def training_flags(tiny_mnist, out_dir, epochs=4):
    return [
        "--data-dir",
        tiny_mnist,
        "--out-dir",
        out_dir,
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]


def wait_for_epochs(out_dir, count, process, limit=120):
    """Wait until history.csv holds `count` epochs, then return at once (mid-epoch, usually)."""
    history = os.path.join(out_dir, "history.csv")
    deadline = time.time() + limit
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(history) and len(open(history).read().strip().splitlines()) > count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no epoch {count} within {limit} s")


def history_without_seconds(out_dir):
    lines = open(os.path.join(out_dir, "history.csv")).read().strip().splitlines()
    return [line.rsplit(",", 1)[0] for line in lines]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_mnist, tmp_path, cli):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    process = start_training(tiny_mnist, killed)
    wait_for_epochs(killed, 2, process)
    process.kill()
    process.wait()
    torch.load(os.path.join(killed, "last.pt"), weights_only=True)
    assert cli(train, *training_flags(tiny_mnist, straight)).returncode == 0
    # The lock went with the killed process: its folder can be continued at once.
    result = cli(
        train, *training_flags(tiny_mnist, killed), "--resume", os.path.join(killed, "last.pt")
    )
    assert result.returncode == 0, result.stderr
    assert history_without_seconds(killed) == history_without_seconds(straight)


@pytest.mark.parametrize(
    "signal_number, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_run_holds_its_folder_and_keeps_the_last_epoch_when_stopped(
    signal_number, status, tiny_mnist, tmp_path, cli
):
    out_dir = str(tmp_path / "run")
    process = start_training(tiny_mnist, out_dir, "--epochs", "40")
    try:
        wait_for_epochs(out_dir, 1, process)
        second = cli(
            train,
            "--data-dir",
            tiny_mnist,
            "--out-dir",
            out_dir,
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--overwrite",
        )
        assert_clean_failure(second, out_dir, f"pid {process.pid}")
        assert "epoch" not in second.stdout.replace("epochs=", "")
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr and f"stopped by {data.stop_name(signal_number)};" in stderr
    epochs_done = len(open(os.path.join(out_dir, "history.csv")).read().strip().splitlines()) - 1
    assert torch.load(os.path.join(out_dir, "last.pt"), weights_only=True)["epoch"] == epochs_done
    command = stderr.strip().splitlines()[-1].split("resume with: ", 1)[1]
    assert command.endswith(f"--resume {os.path.join(out_dir, 'last.pt')}")
    assert "--seed 3" in command and "--batch-size 4" in command
    result = cli(
        train,
        *command.split()[2:-2],
        "--epochs",
        str(epochs_done + 1),
        "--resume",
        os.path.join(out_dir, "last.pt"),
    )
    assert result.returncode == 0, result.stderr


def global_state(*folders):
    """What a notebook would see changed by a call: torch's random state, TF32, the handlers of
    the stop signals, matplotlib's backend, and files in `folders` left open."""
    import matplotlib

    open_files = []
    for descriptor in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        with contextlib.suppress(OSError):
            open_files.append(os.readlink(f"/proc/self/fd/{descriptor}"))
    handlers = [signal.getsignal(number) for number in data.STOP_SIGNALS]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    ours = [name for name in open_files if name.startswith(tuple(map(str, folders)))]
    return torch.random.get_rng_state().tolist(), tf32, handlers, matplotlib.get_backend(), ours


def test_every_main_returns_a_status_and_leaves_the_notebooks_state_alone(run_dir, tiny_mnist,
                                                                           tmp_path, cli):
    import pictures

    before = global_state(tmp_path, tiny_mnist)
    best = os.path.join(run_dir, "best.pt")
    needs = {train: [], evaluate: [best], visualize: [], pictures: ["x", "--out-dir", "y"]}
    for script, needed in needs.items():
        result = cli(script, *needed, "--no-such-flag")
        assert result.returncode == 2 and "--no-such-flag" in result.stderr
        assert cli(script, "--help").returncode == 0
    assert cli(train, "--data-dir", tiny_mnist, "--out-dir", tmp_path / "new", "--epochs", "1",
               "--device", "cpu").returncode == 0
    assert cli(train, "--data-dir", tiny_mnist, "--out-dir", tmp_path / "new2", "--epochs", "1",
               "--stage", "2", "--resume", best, "--device", "cpu").returncode == 0
    assert cli(evaluate, best, "--data-dir", tiny_mnist, "--device", "cpu").returncode == 0
    assert cli(visualize, "--checkpoint", best, "--data-dir", tiny_mnist, "--out-dir",
               tmp_path / "drawn").returncode == 0
    # Refused calls leave no folder behind.
    for flags in (["--data-dir", tmp_path / "nowhere"], ["--resume", tmp_path / "none.pt"],
                  ["--dataset", "images", "--data-dir", tmp_path], ["--batch-size", "1000"]):
        result = cli(train, "--out-dir", tmp_path / "refused", "--epochs", "1", "--device", "cpu",
                     *([] if "--data-dir" in flags else ["--data-dir", tiny_mnist]), *flags)
        assert result.returncode == 2 and not os.path.exists(tmp_path / "refused"), result.stderr
    assert global_state(tmp_path, tiny_mnist) == before


def test_model_py_pasted_into_a_notebook_cell_prints_nothing(capsys):
    names = {"__name__": "__main__"}  # what a kernel's cell runs as
    exec(open(os.path.join(HERE, "model.py")).read(), names)
    assert capsys.readouterr() == ("", "")
    reconstructions, codes = names["AutoEncoder"]()(torch.rand(2, 1, 28, 28))
    assert reconstructions.shape == (2, 1, 28, 28) and codes.shape == (2, 128)
    assert "(reconstruction" in names["AutoEncoder"].forward.__doc__


def test_importing_the_scripts_changes_no_matplotlib_backend():
    code = ("import matplotlib; backend = matplotlib.get_backend(); import sys;"
            " import train, evaluate, visualize, pictures, model, data, muon;"
            " assert matplotlib.get_backend() == backend, matplotlib.get_backend();"
            " assert 'matplotlib.pyplot' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True,
                            env={**os.environ, "MPLBACKEND": "svg"})
    assert result.returncode == 0, result.stderr
