"""Speed levers: what train.py applies only to go faster. Nothing here changes what is
computed beyond rounding, and the project is correct with every lever off.

Each gain is how much faster whole epochs (training and evaluation) run with the lever
than without it, stage 1 / stage 2, measured by `python bench.py --levers` on a 2-core
Xeon with AMX, bf16 (results/bench_amx.txt) and on an AMD EPYC with AVX2 only, fp32, one
thread (results/bench_avx2_levers.txt); differences of about 5% (AVX2) and 10-30% (that
Xeon) are within those runs' noise.
bench.py turns a lever off by naming it in the environment variable FAST_LEVERS_OFF.
"""

import ctypes
import ctypes.util
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

LEVERS_OFF = set(os.environ.get("FAST_LEVERS_OFF", "").split(","))

# With --optimizer adamw: AMX -9% / 11% (within that run's noise), AVX2 3% / 4% (measured
# before Muon became the default). AdamW's fused kernel does one pass over all parameters
# per step instead of a dozen small operations per tensor.
FUSED_OPTIMIZER = "fused_optimizer" not in LEVERS_OFF


def keep_freed_memory():
    """Have the C library keep freed memory for reuse instead of returning it to the OS.

    AMX 32% / 0%, AVX2 14% / 5%: glibc hands large freed blocks back to the OS, so every step
    faults its activations in again page by page; PyTorch's CPU tuning guide swaps in
    jemalloc or TCMalloc for this, two mallopt settings need nothing installed.
    Returns False where there is no mallopt (macOS, Windows), which changes nothing there.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if "keep_freed_memory" in LEVERS_OFF or libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold, one_gib = -1, -3, 1 << 30
    return bool(libc.mallopt(m_trim_threshold, one_gib) and libc.mallopt(m_mmap_threshold, one_gib))


def cpu_flags():
    """The CPU's feature flags as Linux's /proc/cpuinfo lists them; empty elsewhere (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as file:
            return set(file.read().split())
    except OSError:
        return set()


def training_precision(precision, device):
    """The training arithmetic, (bf16, why): with --precision auto, bf16 autocast only where
    the device computes bf16 in hardware, fp32 elsewhere, where bf16 is emulated and slower.

    AMX 16% / 12% (`--precision fp32` is the lever). CUDA GPUs of compute capability 8.0
    and later (A100, RTX 30xx, L4, H100) have bf16 tensor cores; a T4, V100 or P100 does
    not, and torch.cuda.is_bf16_supported() answers True there because it counts
    emulation. CPUs: AMX (Xeon 4th generation and later) or AVX512-BF16 (Zen 4 and later).
    Apple's MPS trains in fp32: bf16 there has not been measured to pay. Evaluation is fp32.
    """
    if precision != "auto":
        return precision == "bf16", f"--precision {precision}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return True, f"this GPU computes bf16 natively (compute capability {major}.{minor})"
        return False, f"this GPU has no native bf16 (compute capability {major}.{minor}, below 8.0)"
    if device.type == "mps":
        return False, "bf16 on Apple's MPS has not been measured to pay"
    native = cpu_flags() & {"amx_bf16", "avx512_bf16"}
    if native:
        return True, f"this CPU computes bf16 natively ({', '.join(sorted(native))})"
    return False, "this CPU has no native bf16 (no AMX or AVX512-BF16)"


def prepare_device(device):
    """What runs on a CUDA GPU: cuDNN times its convolution algorithms once and keeps the
    fastest for these fixed shapes (benchmark mode; not measured here, no GPU was lent),
    and fp32 stays fp32: no TF32 for convolutions, which Ampere and later would use, so
    that evaluation computes the same numbers as on a CPU up to rounding."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = "cudnn_benchmark" not in LEVERS_OFF
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


class WholeInputConv2d(nn.Conv2d):
    """A Conv2d whose kernel is as large as its input (the latent conv: 3x3 in, 1x1 out).

    That is one matrix product, flattened image times flattened kernels: the same
    numbers up to rounding, and several times faster than the general convolution
    routines for this shape. The parameters are nn.Conv2d's.
    """

    def forward(self, x):
        if x.shape[-2:] != self.kernel_size or self.padding != (0, 0):
            return super().forward(x)
        # Both flattened in (row, column, channel) order: free for channels_last input.
        pixels = x.permute(0, 2, 3, 1).flatten(1)
        kernels = self.weight.permute(0, 2, 3, 1).flatten(1)
        return F.linear(pixels, kernels, self.bias)[:, :, None, None]


class PointInputConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d applied to a 1x1 input: each output is one kernel scaled per channel.

    One matrix product, code times flattened kernels; as for WholeInputConv2d.
    """

    def forward(self, x):
        if x.shape[-2:] != (1, 1) or self.padding != (0, 0):
            return super().forward(x)
        kernels = self.weight.permute(0, 2, 3, 1).flatten(1)  # in x (row, column, out channel)
        pixels = (x.flatten(1) @ kernels).unflatten(1, (*self.kernel_size, self.out_channels))
        return (pixels + self.bias).permute(0, 3, 1, 2)  # channels_last, like the conv would be


def with_matrix_product_layers(model):
    """`model` with its two 1x1 layers computed as matrix products (AMX 15% / 8%, AVX2
    9% / 0%). The parameters and state_dict keys stay as they are."""
    for layers, index, fast_class in ((model.encoder, 3, WholeInputConv2d),
                                      (model.decoder, 1, PointInputConvTranspose2d)):
        layer = layers[index]
        layers[index] = fast_class(layer.in_channels, layer.out_channels, layer.kernel_size)
        layers[index].weight, layers[index].bias = layer.weight, layer.bias
    return model


def prepare_model(model):
    """The model as it trains fastest: the matrix-product layers, and channels_last
    (NHWC) memory, which oneDNN's CPU convolutions and GPUs run faster (AMX 55% / 8%,
    AVX2 29% / 26%)."""
    if "matrix_layers" not in LEVERS_OFF:
        model = with_matrix_product_layers(model)
    if "channels_last" not in LEVERS_OFF:
        model = model.to(memory_format=torch.channels_last)
    return model
