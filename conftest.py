"""Shared pytest fixtures: a tiny synthetic MNIST written as real IDX files.

The tests run the project's real code path (torchvision's MNIST reader included) on it,
so they need neither the internet nor ../shared. Tests marked `slow` (real MNIST, the
shipped weights, results/bench.py) run only with --run-slow, as .ci/run does.
"""

import collections
import os
import shutil
import struct

import pytest
import torch

NUM_TRAIN, NUM_TEST = 320, 120
IDX_UBYTE = 0x08


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end runs of a minute or so; run with --run-slow"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def write_idx(path, array):
    """Write a uint8 tensor in the IDX format (magic, sizes, then raw bytes)."""
    header = struct.pack(">BBBB", 0, 0, IDX_UBYTE, array.dim())
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    with open(path, "wb") as file:
        file.write(header + array.contiguous().numpy().tobytes())


def synthetic_digits(count, seed):
    """Blurry strokes on a black 28x28 canvas with a 4-pixel margin, labelled 0-9."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.zeros(count, 28, 28)
    steps = torch.linspace(0, 1, 30)
    for index, label in enumerate(labels.tolist()):
        start = 6 + torch.rand(2, generator=generator) * 4 + label % 3
        end = 18 + torch.rand(2, generator=generator) * 4 - label % 4
        points = (start[None] + steps[:, None] * (end - start)[None]).round().long().clamp(4, 23)
        images[index, points[:, 0], points[:, 1]] = 1.0
        images[index, points[:, 0], (points[:, 1] + label // 3).clamp(4, 23)] = 1.0
    images = torch.nn.functional.avg_pool2d(images[:, None], 3, stride=1, padding=1)[:, 0]
    return (images / images.amax() * 255).round().to(torch.uint8), labels.to(torch.uint8)


def write_mnist(root, folder="MNIST"):
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw)
    for prefix, count, seed in (("train", NUM_TRAIN, 0), ("t10k", NUM_TEST, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return raw


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """A --data-dir holding MNIST/raw/ with 320 training and 120 test digits."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(str(root))
    return str(root)


@pytest.fixture(scope="session")
def trained_run(tiny_mnist, tmp_path_factory):
    """An --out-dir after 2 epochs of stage 1 on the tiny data (best.pt, last.pt, history.csv)."""
    import train

    out_dir = str(tmp_path_factory.mktemp("run"))
    assert (
        train.main(
            [
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                out_dir,
                "--epochs",
                "2",
                "--batch-size",
                "32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return out_dir


Result = collections.namedtuple(
    "Result", "returncode stdout stderr"
)  # of a script's main() called by `cli`


@pytest.fixture
def cli(capsys):
    """Call a script's main() with string arguments, as its command line would; returns a Result."""

    def call(script, *args):
        capsys.readouterr()
        try:
            status = script.main([str(arg) for arg in args])
        except SystemExit as exit:  # argparse's way out
            status = exit.code
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return call


def snapshot(folder):
    """Bytes of every file in `folder`, to show that nothing was overwritten. The lock file
    is left out: it names whichever run held the folder last, and holds no results."""
    return {
        name: open(os.path.join(folder, name), "rb").read()
        for name in sorted(os.listdir(folder))
        if name != ".lock"
    }


@pytest.fixture
def run_dir(trained_run, tmp_path):
    """A copy of a finished run (best.pt, last.pt, history.csv) that bad commands must not touch."""
    folder = str(tmp_path / "run")
    shutil.copytree(trained_run, folder)
    return folder


def assert_clean_failure(result, *words, status=2):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
