"""What the optimizer's step costs against the rest of a training step, per optimizer.

    python results/experiments/optimizer_cost.py

Times train.py's step on random batches of 64 (fast.prepare_model, the training
arithmetic train.py would pick here): forward and backward, then optimizer.step, each
the median of 200 steps after 30 of warm-up, taking turns between the optimizers. Then
the Newton-Schulz iterations alone for each kernel Muon steps, three ways: muon.py's (on
the smaller Gram side, fp32), the textbook form on the matrix itself in fp32, and in bf16.
"""

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import fast  # noqa: E402
import muon  # noqa: E402
import train  # noqa: E402
from model import AutoEncoder  # noqa: E402
from test_muon import textbook_newton_schulz  # noqa: E402

BATCH, WARMUP, STEPS = 64, 30, 200


def timed_step(model, optimizer, batch, bf16):
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        reconstruction, _ = model(batch)
    loss = F.mse_loss(reconstruction.float(), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    middle = time.perf_counter()
    optimizer.step()
    return middle - started, time.perf_counter() - middle


def median_ms(function, *args):
    for _ in range(WARMUP):
        function(*args)
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def newton_schulz_times(optimizer):
    """Milliseconds of each way of orthogonalizing every matrix that Muon steps."""
    matrices = [muon.as_matrix(p, group["out_dim"]) for group in optimizer.param_groups if group["muon"]
                for p in group["params"]]
    ways = {"muon.py": muon.orthogonalize,
            "textbook fp32": lambda m: textbook_newton_schulz(m, dtype=torch.float32),
            "textbook bf16": lambda m: textbook_newton_schulz(m, dtype=torch.bfloat16)}
    totals = dict.fromkeys(ways, 0.0)
    for matrix in matrices:
        times = {way: median_ms(function, matrix) for way, function in ways.items()}
        print(f"  {tuple(matrix.shape)}: " + ", ".join(f"{way} {ms:.2f} ms" for way, ms in times.items()))
        totals = {way: totals[way] + times[way] for way in ways}
    print("  all of them: " + ", ".join(f"{way} {total:.2f} ms" for way, total in totals.items()))


def main():
    fast.keep_freed_memory()
    bf16, why = fast.training_precision("auto", torch.device("cpu"))
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if bf16 else 'fp32'} ({why})")
    runs = {}
    for name in ("muon", "adamw"):
        torch.manual_seed(0)
        model = fast.prepare_model(AutoEncoder())
        runs[name] = (model, train.make_optimizer(model, train.parse_args(["--optimizer", name])), [])
    batch = torch.rand(BATCH, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    for step in range(WARMUP + STEPS):
        for model, optimizer, times in runs.values():
            timing = timed_step(model, optimizer, batch, bf16)
            if step >= WARMUP:
                times.append(timing)
    for name, (_, _, times) in runs.items():
        backward, stepping = (statistics.median(t[i] for t in times) * 1e3 for i in (0, 1))
        print(f"{name:>5}: forward and backward {backward:5.2f} ms, optimizer.step {stepping:5.2f} ms "
              f"({stepping / (backward + stepping):.0%} of the step)")
    print("Newton-Schulz iterations alone, per kernel on Muon [rows, cols]:")
    newton_schulz_times(runs["muon"][1])


if __name__ == "__main__":
    main()
