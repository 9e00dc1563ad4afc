"""What the optimizer's step costs against the rest of a training step, per optimizer.

    python results/experiments/optimizer_cost.py

Times train.py's step on random batches of 64 (fast.prepare_model, the training
arithmetic train.py would pick here): forward and backward, then optimizer.step, each
the median of 200 steps after 30 of warm-up, taking turns between the optimizers.
"""

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import fast  # noqa: E402
import train  # noqa: E402
from model import AutoEncoder  # noqa: E402

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


if __name__ == "__main__":
    main()
