"""The README's notebook cells in a real Jupyter kernel (nbclient, ipykernel), as a student runs
them: the scripts copied beside the notebook, imported and run in the kernel and under `!`, both
interrupted as the kernel's interrupt button does it, model.py pasted into a cell, the README's
snippet, and the notebook's own state (matplotlib's backend, torch's random state, TF32, the signal
handlers, open files) the same after every call as before."""

import os
import re
import shutil
import signal
import threading
import time

import nbformat
import pytest
import torch
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
README = open(os.path.join(HERE, "README.md")).read()
SCRIPTS = ["model.py", "data.py", "muon.py", "train.py", "evaluate.py", "visualize.py",
           "pictures.py"]

STATE = """
import os, signal, matplotlib, torch

def state():
    files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            files.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    handlers = [signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    return {"backend": matplotlib.get_backend(), "rng": torch.random.get_rng_state().tolist(),
            "tf32": tf32, "handlers": handlers,
            "files": sorted(name for name in files if name.startswith(os.getcwd()))}

before = state()
open("kernel.pid", "w").write(str(os.getpid()))
"""
SAME_STATE = """
changed = [key for key, value in state().items() if value != before[key]]
assert not changed, f"changed: {changed}"
"""
STOPPED_IN_THE_KERNEL = """
import train
status = train.main(["--epochs", "1000", "--batch-size", "16", "--out-dir", "in-kernel"])
assert status == 130, status
""" + SAME_STATE
STOPPED_UNDER_BANG = "!python train.py --epochs 1000 --batch-size 16 --out-dir under-bang"
REFUSED = """
assert train.main(["--epochs", "oops"]) == 2  # a flag mistake: a status, no SystemExit
assert train.main(["--out-dir", "refused", "--data-dir", "nowhere", "--epochs", "1"]) == 2
assert not os.path.exists("refused")
""" + SAME_STATE


def readme_cells(section):
    text = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def interrupt_when_trained(folder, root):
    """Once `folder` holds an epoch, SIGINT to the kernel's process group: jupyter_client's way
    of interrupting a kernel. Runs beside the notebook, in a thread."""
    deadline = time.time() + 240
    history, pid_file = os.path.join(root, folder, "history.csv"), os.path.join(root, "kernel.pid")
    while time.time() < deadline:
        if os.path.exists(history) and len(open(history).read().splitlines()) > 1:
            os.killpg(os.getpgid(int(open(pid_file).read())), signal.SIGINT)
            return
        time.sleep(0.05)


def text_of(cell):
    return "".join(output.get("text", "") for output in cell.outputs)


@pytest.mark.slow
def test_the_readme_notebook_runs_in_a_real_kernel_and_stops_cleanly(tiny_mnist, tmp_path):
    for name in SCRIPTS:
        shutil.copy(os.path.join(HERE, name), tmp_path)
    os.symlink(tiny_mnist, tmp_path / "data")
    os.symlink(os.path.join(HERE, "results"), tmp_path / "results")
    model_py = open(os.path.join(HERE, "model.py")).read()
    cells = [STATE, *readme_cells("In a notebook (Colab, Jupyter)"), SAME_STATE, model_py,
             *readme_cells("Use the trained model"), STOPPED_IN_THE_KERNEL, STOPPED_UNDER_BANG,
             REFUSED]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    for folder in ("in-kernel", "under-bang"):
        threading.Thread(target=interrupt_when_trained, args=(folder, str(tmp_path)),
                         daemon=True).start()
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a failed assert in a cell fails here, naming the cell

    training, script, drawing = notebook.cells[1:4]
    for cell in (training, script):
        assert "%|" in text_of(cell), "no progress bar"
        assert re.search(r"stage 1 epoch +8/8", text_of(cell))
    kinds = [kind for output in drawing.outputs for kind in output.get("data", {})]
    assert kinds.count("image/png") == 2, "the PNG and the inline plot"
    assert notebook.cells[5].outputs == [], "pasting model.py prints nothing"
    in_kernel, under_bang = text_of(notebook.cells[7]), text_of(notebook.cells[8])
    for folder, output in (("in-kernel", in_kernel), ("under-bang", under_bang)):
        assert f"stopped by Ctrl-C; {folder}/last.pt holds epoch" in output, output
        assert f"--resume {folder}/last.pt" in output and "Traceback" not in output
        epoch = int(re.search(rf"{folder}/last.pt holds epoch (\d+)", output).group(1))
        rows = open(tmp_path / folder / "history.csv").read().strip().splitlines()
        assert len(rows) == 1 + epoch == 1 + torch.load(tmp_path / folder / "last.pt")["epoch"]
