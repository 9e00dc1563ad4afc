"""muon.py: the same update as torch.optim.Muon on matrices, AdamW's on the rest, and
kernels flattened with their output channels first."""

import pytest
import torch

import muon


def textbook_newton_schulz(matrix, steps=5, dtype=torch.float64):
    """Muon's iteration as its authors write it, X <- a X + (b A + c A^2) X with A = X X^T."""
    a, b, c = muon.NEWTON_SCHULZ_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(16, 9), (32, 144), (128, 576), (300, 40), (1, 144)])
def test_orthogonalize_is_the_textbook_iteration(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = textbook_newton_schulz(matrix)
    torch.testing.assert_close(muon.orthogonalize(matrix).double(), expected, rtol=0, atol=2e-5)
    singular_values = torch.linalg.svdvals(expected)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.3  # about orthogonal, as Muon wants


def stepped(optimizer_class, shapes, steps=3, **options):
    """Parameters of the given shapes after `steps` steps with the same seeded gradients."""
    generator = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    optimizer = optimizer_class(params, **options)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
    return params


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon came with torch 2.9")
def test_on_matrices_the_update_is_torch_optim_muons():
    shapes = [(16, 40), (50, 20), (64, 64)]
    start = stepped(torch.optim.SGD, shapes, steps=0, lr=0.0)
    ours = stepped(lambda params, **kw: muon.MuonAdamW([{"params": params, "muon": True, **kw}]), shapes,
                   lr=0.02, weight_decay=0.1, momentum=0.95)
    theirs = stepped(torch.optim.Muon, shapes, lr=0.02, weight_decay=0.1, momentum=0.95)
    for before, mine, reference in zip(start, ours, theirs):
        moved, moved_reference = (mine - before).flatten(), (reference - before).flatten()
        # torch.optim.Muon iterates in bf16, this file in fp32: the same step up to bf16's rounding.
        assert torch.nn.functional.cosine_similarity(moved, moved_reference, dim=0) > 0.999
        torch.testing.assert_close(mine, reference, rtol=0, atol=2e-3)


def test_the_other_groups_step_as_torch_optim_adamw():
    shapes = [(16,), (5, 3), (7,)]
    ours = stepped(lambda params, **kw: muon.MuonAdamW([{"params": params, **kw}]), shapes, steps=5,
                   lr=0.01, weight_decay=0.1)
    theirs = stepped(torch.optim.AdamW, shapes, steps=5, lr=0.01, weight_decay=0.1)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)


def test_a_transposed_convolution_is_orthogonalized_with_its_output_channels_first():
    layer = torch.nn.ConvTranspose2d(8, 3, 3)  # kernel [in 8, out 3, 3, 3]
    layer.weight.grad = torch.randn(layer.weight.shape)
    before = layer.weight.detach().clone()
    optimizer = muon.MuonAdamW([{"params": [layer.weight], "muon": True, "out_dim": 1, "lr": 0.1, "momentum": 0.0}])
    optimizer.step()
    matrix = layer.weight.grad.transpose(0, 1).flatten(1)  # [out 3, in 8 x 3 x 3]
    expected = muon.orthogonalize(matrix).unflatten(1, (8, 3, 3)).transpose(0, 1)
    torch.testing.assert_close(before - layer.weight.detach(), 0.1 * expected)
