"""Unit tests: the model against the reference layout, the data pipeline, the augmentation."""

import math

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, ToTensor
from torchvision.transforms.v2 import functional as TF

import data
from model import AutoEncoder

# From the reference README's torchsummary table: (layer, output shape, parameters).
REFERENCE_TABLE = [
    ("Conv2d-1", [-1, 16, 28, 28], 160),
    ("BatchNorm2d-2", [-1, 16, 28, 28], 32),
    ("MaxPool2d-3", [-1, 16, 14, 14], 0),
    ("ELU-4", [-1, 16, 14, 14], 0),
    ("Conv2d-5", [-1, 32, 12, 12], 4640),
    ("BatchNorm2d-6", [-1, 32, 12, 12], 64),
    ("MaxPool2d-7", [-1, 32, 6, 6], 0),
    ("ELU-8", [-1, 32, 6, 6], 0),
    ("Conv2d-9", [-1, 64, 6, 6], 18496),
    ("BatchNorm2d-10", [-1, 64, 6, 6], 128),
    ("MaxPool2d-11", [-1, 64, 3, 3], 0),
    ("ELU-12", [-1, 64, 3, 3], 0),
    ("Conv2d-13", [-1, 128, 1, 1], 73856),
    ("Flatten-14", [-1, 128], 0),
    ("Unflatten-15", [-1, 128, 1, 1], 0),
    ("ConvTranspose2d-16", [-1, 64, 3, 3], 73792),
    ("Upsample-17", [-1, 64, 6, 6], 0),
    ("ConvTranspose2d-18", [-1, 32, 6, 6], 18464),
    ("BatchNorm2d-19", [-1, 32, 6, 6], 64),
    ("ELU-20", [-1, 32, 6, 6], 0),
    ("Upsample-21", [-1, 32, 12, 12], 0),
    ("ConvTranspose2d-22", [-1, 16, 14, 14], 4624),
    ("BatchNorm2d-23", [-1, 16, 14, 14], 32),
    ("ELU-24", [-1, 16, 14, 14], 0),
    ("Upsample-25", [-1, 16, 28, 28], 0),
    ("ConvTranspose2d-26", [-1, 1, 28, 28], 145),
    ("BatchNorm2d-27", [-1, 1, 28, 28], 2),
    ("ELU-28", [-1, 1, 28, 28], 0),
]

# The reference checkpoint's state_dict (../shared/reference/state_dict_keys.txt).
REFERENCE_KEYS = """
encoder.0.0.weight (16, 1, 3, 3)|encoder.0.0.bias (16,)
encoder.0.1.weight (16,)|encoder.0.1.bias (16,)
encoder.0.1.running_mean (16,)|encoder.0.1.running_var (16,)|encoder.0.1.num_batches_tracked ()
encoder.1.0.weight (32, 16, 3, 3)|encoder.1.0.bias (32,)
encoder.1.1.weight (32,)|encoder.1.1.bias (32,)
encoder.1.1.running_mean (32,)|encoder.1.1.running_var (32,)|encoder.1.1.num_batches_tracked ()
encoder.2.0.weight (64, 32, 3, 3)|encoder.2.0.bias (64,)
encoder.2.1.weight (64,)|encoder.2.1.bias (64,)
encoder.2.1.running_mean (64,)|encoder.2.1.running_var (64,)|encoder.2.1.num_batches_tracked ()
encoder.3.weight (128, 64, 3, 3)|encoder.3.bias (128,)
decoder.1.weight (128, 64, 3, 3)|decoder.1.bias (64,)
decoder.2.1.weight (64, 32, 3, 3)|decoder.2.1.bias (32,)
decoder.2.2.weight (32,)|decoder.2.2.bias (32,)
decoder.2.2.running_mean (32,)|decoder.2.2.running_var (32,)|decoder.2.2.num_batches_tracked ()
decoder.3.1.weight (32, 16, 3, 3)|decoder.3.1.bias (16,)
decoder.3.2.weight (16,)|decoder.3.2.bias (16,)
decoder.3.2.running_mean (16,)|decoder.3.2.running_var (16,)|decoder.3.2.num_batches_tracked ()
decoder.4.1.weight (16, 1, 3, 3)|decoder.4.1.bias (1,)|decoder.4.2.weight (1,)|decoder.4.2.bias (1,)
decoder.4.2.running_mean (1,)|decoder.4.2.running_var (1,)|decoder.4.2.num_batches_tracked ()
"""


def reference_keys():
    entries = REFERENCE_KEYS.replace("\n", "|").strip("|").split("|")
    return [(entry.split(" ", 1)[0], entry.split(" ", 1)[1]) for entry in entries]


def layer_table(model):
    """(name like 'Conv2d-1', output shape, parameter count) of each leaf layer, as torchsummary
    lists them."""
    rows = []

    def record(module, _inputs, output):
        rows.append(
            (
                f"{type(module).__name__}-{len(rows) + 1}",
                [-1, *output.shape[1:]],
                sum(p.numel() for p in module.parameters()),
            )
        )

    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(record)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 28, 28))
    return rows


def test_layer_table_matches_reference():
    assert layer_table(AutoEncoder()) == REFERENCE_TABLE


def test_state_dict_layout_matches_reference_checkpoint():
    state = AutoEncoder().state_dict()
    assert [(name, str(tuple(t.shape))) for name, t in state.items()] == reference_keys()


def test_forward_shapes_and_latent():
    model = AutoEncoder().eval()
    reconstruction, latent = model(torch.rand(5, 1, 28, 28))
    assert reconstruction.shape == (5, 1, 28, 28)
    assert latent.shape == (5, 128)
    assert torch.equal(model.decoder(latent), reconstruction)


def test_conv_weights_are_xavier_uniform_and_biases_zero():
    torch.manual_seed(0)
    for module in AutoEncoder().modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            fan_in = (
                module.weight[0].numel()
                if isinstance(module, torch.nn.Conv2d)
                else module.weight.shape[0] * 9
            )
            fan_out = (
                module.weight.shape[0] * 9
                if isinstance(module, torch.nn.Conv2d)
                else module.weight[0].numel()
            )
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound
            assert module.weight.abs().max() > 0.8 * bound
            assert torch.count_nonzero(module.bias) == 0


def test_load_split_reads_idx_files_like_to_tensor(tiny_mnist):
    images, labels = data.load_split(tiny_mnist, train=True)
    assert images.shape == (320, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (320,) and labels.max() == 9
    batch = data.to_float(images[:4])
    to_tensor = ToTensor()
    expected = torch.stack(
        [to_tensor(Image.fromarray(img.numpy(), mode="L")) for img in images[:4]]
    )
    assert torch.equal(batch, expected)
    assert batch.min() >= 0 and batch.max() <= 1


def test_shuffled_batches_cover_every_image_once():
    images = torch.arange(10, dtype=torch.uint8)[:, None, None].expand(10, 28, 28)
    assert torch.equal(torch.cat(list(data.batches(images, 4))), data.to_float(images))
    batches = list(data.batches(images, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    seen = torch.cat(batches)[:, 0, 0, 0] * 255
    assert sorted(seen.round().long().tolist()) == list(range(10))
    assert seen.round().long().tolist() != list(range(10))


def test_perspective_matches_torchvision_per_sample():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 28, 28, generator=generator)
    endpoints = data.sample_perspective_endpoints(16, generator)
    warped = data.perspective(images, data.perspective_coefficients(data.CORNERS, endpoints))
    startpoints = data.CORNERS.tolist()
    for image, corners, result in zip(images, endpoints, warped):
        expected = TF.perspective(
            image, startpoints, corners.tolist(), interpolation=InterpolationMode.BILINEAR
        )
        torch.testing.assert_close(result, expected, atol=1e-4, rtol=0)


def test_rotation_matches_torchvision_per_sample():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(16, 1, 28, 28, generator=generator)
    degrees = torch.empty(16).uniform_(-10, 10, generator=generator)
    rotated = data.rotate(images, degrees)
    for image, angle, result in zip(images, degrees, rotated):
        expected = TF.rotate(image, angle.item(), interpolation=InterpolationMode.NEAREST)
        assert torch.equal(result, expected)


def test_perspective_parameters_follow_torchvision_distribution():
    generator = torch.Generator().manual_seed(2)
    endpoints = data.sample_perspective_endpoints(4000, generator)
    offsets = (endpoints - data.CORNERS).abs()
    # RandomPerspective(0.4) on 28x28: each corner moves inwards by 0..5 whole pixels.
    assert offsets.min() == 0 and offsets.max() == 5
    assert set(offsets.unique().tolist()) == {0, 1, 2, 3, 4, 5}
    inward = endpoints - data.CORNERS
    assert (inward[:, 0] >= 0).all() and (inward[:, 2] <= 0).all()


def test_augment_warps_about_half_and_keeps_the_rest_exact():
    generator = torch.Generator().manual_seed(3)
    images = torch.zeros(400, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0
    augmented = data.augment(images, generator)
    assert augmented.shape == images.shape
    # An unwarped image is only rotated by nearest sampling: its values stay 0 or 1.
    only_rotated = ((augmented == 0) | (augmented == 1)).flatten(1).all(dim=1)
    assert 0.35 < only_rotated.float().mean() < 0.65
    assert not torch.equal(augmented, images)


def test_augment_is_deterministic_for_a_seed():
    images = torch.rand(8, 1, 28, 28)
    first = data.augment(images, torch.Generator().manual_seed(7))
    second = data.augment(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
