"""The shipped weights: the README's snippet runs as written, and (with real MNIST) the
weights give the test MSE that the README publishes for them."""

import os
import re

import pytest

import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
README = open(os.path.join(HERE, "README.md")).read()
DATA_DIR = os.environ.get("MNIST_DATA_DIR")


def readme_snippet():
    section = README.split("## Use the trained model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_snippet_runs_as_written(tiny_mnist, tmp_path, monkeypatch):
    # The snippet's paths are relative to the repo: results/ from here, data/ the tiny MNIST.
    os.symlink(os.path.join(HERE, "results"), tmp_path / "results")
    os.symlink(tiny_mnist, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(readme_snippet(), names)
    assert names["codes"].shape == (8, 128)
    assert names["reconstructions"].shape == (8, 1, 28, 28)
    assert len(readme_snippet().strip().splitlines()) <= 10


@pytest.mark.slow
@pytest.mark.skipif(not DATA_DIR, reason="set MNIST_DATA_DIR to the folder holding MNIST/raw/")
def test_shipped_mnist_weights_give_the_published_test_mse(capsys):
    published = re.search(r"`results/mnist/autoencoder\.pt` holds .*?test\s+MSE (0\.\d{7})", README, re.DOTALL).group(1)
    assert evaluate.main([os.path.join(HERE, "results", "mnist", "autoencoder.pt"), "--data-dir", DATA_DIR,
                          "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    # Printed to 7 decimals; another CPU's fp32 kernels may round the last one the other way.
    assert float(printed.split("=")[1]) == pytest.approx(float(published), abs=1.01e-7)
