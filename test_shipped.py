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


def test_readme_snippet_runs_after_model_py_as_a_notebook_cell_holds_it(tiny_mnist, tmp_path,
                                                                        monkeypatch):
    # The snippet's paths are relative to the repo: results/ from here, data/ the tiny MNIST.
    os.symlink(os.path.join(HERE, "results"), tmp_path / "results")
    os.symlink(tiny_mnist, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    names = {"__name__": "__main__"}  # a notebook's cells: model.py pasted, then the snippet
    exec(open(os.path.join(HERE, "model.py")).read(), names)
    exec(readme_snippet(), names)
    assert names["codes"].shape == (8, 128)
    assert names["reconstructions"].shape == (8, 1, 28, 28)
    assert 0 <= names["shown"].min() and names["shown"].max() <= 1
    assert "import model" not in readme_snippet() and "from model" not in readme_snippet()
    assert len(readme_snippet().strip().splitlines()) <= 10


@pytest.mark.slow
@pytest.mark.skipif(not DATA_DIR, reason="set MNIST_DATA_DIR to the folder holding MNIST/raw/")
def test_shipped_mnist_weights_give_the_published_test_mse(capsys):
    published = re.search(
        r"`results/mnist/autoencoder\.pt` holds .*?test\s+MSE (0\.\d{7})", README, re.DOTALL
    ).group(1)
    weights = os.path.join(HERE, "results", "mnist", "autoencoder.pt")
    assert evaluate.main([weights, "--data-dir", DATA_DIR, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    # Printed to 7 decimals; another CPU's fp32 kernels may round the last one the other way.
    assert float(printed.split("=")[1]) == pytest.approx(float(published), abs=1.01e-7)
