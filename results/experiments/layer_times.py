"""Where a training step's time goes: milliseconds of one step, this project's model
(fast.prepare_model, fused Adam) against the plain one (model.py as it is, Adam), then
forward plus backward of each layer of the prepared model on its own, batch 64.

    python results/experiments/layer_times.py > results/experiments/layer_times_avx2.txt
"""

import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import fast  # noqa: E402
from model import AutoEncoder  # noqa: E402

BATCH_SIZE, WARMUP, REPEATS = 64, 10, 100


def milliseconds(work):
    for _ in range(WARMUP):
        work()
    started = time.perf_counter()
    for _ in range(REPEATS):
        work()
    return (time.perf_counter() - started) / REPEATS * 1e3


def step_time(model, optimizer, images):
    def step():
        loss = F.mse_loss(model(images)[0], images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return milliseconds(step)


def main():
    fast.keep_freed_memory()
    torch.manual_seed(0)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, "
          f"batch {BATCH_SIZE}, fp32")
    images = torch.rand(BATCH_SIZE, 1, 28, 28)
    plain = AutoEncoder()
    prepared = fast.prepare_model(AutoEncoder())
    print(f"training step, plain: {step_time(plain, torch.optim.Adam(plain.parameters()), images):.1f} ms")
    fused_adam = torch.optim.Adam(prepared.parameters(), fused=fast.FUSED_OPTIMIZER)
    print(f"training step, this project: {step_time(prepared, fused_adam, images):.1f} ms")
    print("layer,input_shape,forward_and_backward_ms")
    activation = images.to(memory_format=torch.channels_last)
    for index, layer in enumerate(m for m in prepared.modules() if not list(m.children())):
        inputs = activation.detach().requires_grad_(index > 0)  # the images need no gradient
        output = layer(inputs)
        gradient = torch.randn_like(output)
        print(f"{type(layer).__name__}-{index + 1},{list(inputs.shape)},"
              f"{milliseconds(lambda: layer(inputs).backward(gradient)):.2f}")
        activation = output.detach()


if __name__ == "__main__":
    main()
