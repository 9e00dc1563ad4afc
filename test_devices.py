"""What differs between CPUs, CUDA GPUs and Apple's MPS, tested without any of them: the
precision rule on faked devices and CPUs, one random stream for every device, and a checkpoint
whose random state another device wrote."""

import io
import os

import pytest
import torch

import data
import train

AVX2_FLAGS = "fpu sse4_2 avx avx2 fma"
ZEN4_FLAGS = AVX2_FLAGS + " avx512f avx512_bf16"
SAPPHIRE_RAPIDS_FLAGS = ZEN4_FLAGS + " amx_tile amx_bf16"


def fake_cpuinfo(monkeypatch, flags):
    """/proc/cpuinfo as train.py reads it, listing `flags` (None: no such file, as on macOS)."""

    def fake_open(path, *args, **kwargs):
        if path != "/proc/cpuinfo":
            return open(path, *args, **kwargs)
        if flags is None:
            raise FileNotFoundError(path)
        return io.StringIO(f"processor\t: 0\nflags\t\t: {flags}\n")

    monkeypatch.setattr(train, "open", fake_open, raising=False)


@pytest.mark.parametrize(
    "capability, bf16",
    [
        ((6, 0), False),  # P100
        ((7, 0), False),  # V100
        ((7, 5), False),  # T4, Colab's free GPU
        ((8, 0), True),  # A100
        ((9, 0), True),  # H100
    ],
)
def test_precision_rule_on_gpus(capability, bf16, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True
    )  # as torch says on a T4
    assert train.bf16_autocast("auto", torch.device("cuda")) is bf16
    assert train.bf16_autocast("fp32", torch.device("cuda")) is False


@pytest.mark.parametrize(
    "flags, bf16",
    [
        (AVX2_FLAGS, False),
        (ZEN4_FLAGS, True),
        (SAPPHIRE_RAPIDS_FLAGS, True),
        ("", False),
        (None, False),
    ],
)
def test_precision_rule_on_cpus(flags, bf16, monkeypatch):
    fake_cpuinfo(monkeypatch, flags)
    assert train.bf16_autocast("auto", torch.device("cpu")) is bf16


def test_precision_rule_on_mps_and_when_told(monkeypatch):
    fake_cpuinfo(monkeypatch, SAPPHIRE_RAPIDS_FLAGS)
    assert train.bf16_autocast("auto", torch.device("mps")) is False
    assert train.bf16_autocast("fp32", torch.device("cpu")) is False
    assert train.bf16_autocast("bf16", torch.device("cpu")) is True


def test_a_run_prints_its_arithmetic(tiny_mnist, tmp_path, monkeypatch, capsys):
    fake_cpuinfo(monkeypatch, AVX2_FLAGS)
    assert (
        train.main(
            [
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                str(tmp_path),
                "--epochs",
                "1",
                "--subset",
                "64",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "training arithmetic: fp32 (--precision auto)" in capsys.readouterr().out


def epoch_of_draws(images, seed=4):
    """The CPU tensors that one stage-2 epoch sends to the images' device, and the generator
    after it."""
    sent, real_to_device = [], data.to_device

    def spy(tensor, device):
        assert tensor.device.type == "cpu"
        sent.append(tensor.clone())
        return real_to_device(tensor, device)

    generator = torch.Generator().manual_seed(seed)
    data.to_device = spy
    try:
        for batch in data.batches(images, 32, generator):
            assert data.augment(batch, generator).device == images.device
    finally:
        data.to_device = real_to_device
    return sent, generator.get_state()


def test_a_seed_draws_the_same_batches_and_warps_whatever_the_device():
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    # The meta device computes shapes only: it stands in for a GPU that draws nothing itself.
    on_cpu, on_meta = epoch_of_draws(images), epoch_of_draws(images.to("meta"))
    assert len(on_cpu[0]) == 1 + 4  # the shuffled order, then each batch's warp parameters
    assert all(torch.equal(a, b) for a, b in zip(on_cpu[0], on_meta[0]))
    assert torch.equal(on_cpu[1], on_meta[1])
    assert not torch.equal(on_cpu[0][1], epoch_of_draws(images, seed=5)[0][1])


def test_a_checkpoint_with_another_devices_generator_state_ends_with_one_line(
    trained_run, tiny_mnist, tmp_path, capsys
):
    checkpoint = torch.load(os.path.join(trained_run, "last.pt"), weights_only=True)
    assert (
        checkpoint["generator_state"].numel() == torch.Generator().get_state().numel()
    )  # the CPU format
    checkpoint["generator_state"] = torch.zeros(
        16, dtype=torch.uint8
    )  # what a CUDA generator's state is
    path = str(tmp_path / "from_gpu.pt")
    torch.save(checkpoint, path)
    assert (
        train.main(
            [
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                str(tmp_path / "on"),
                "--epochs",
                "3",
                "--device",
                "cpu",
                "--resume",
                path,
            ]
        )
        == 2
    )
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "from_gpu.pt" in line and "cannot continue it" in line and "--stage 2" in line
    assert (
        train.main(
            [
                "--stage",
                "2",
                "--data-dir",
                tiny_mnist,
                "--out-dir",
                str(tmp_path / "stage2"),
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--resume",
                path,
            ]
        )
        == 0
    )
