"""muon.py: the textbook Newton-Schulz iteration, torch.optim.Muon's update on matrices, and
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
    assert (
        singular_values.min() > 0.5 and singular_values.max() < 1.3
    )  # about orthogonal, as Muon wants


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
    ours = stepped(muon.Muon, shapes, lr=0.02, weight_decay=0.1, momentum=0.95)
    theirs = stepped(torch.optim.Muon, shapes, lr=0.02, weight_decay=0.1, momentum=0.95)
    for before, mine, reference in zip(start, ours, theirs):
        moved, moved_reference = (mine - before).flatten(), (reference - before).flatten()
        # torch.optim.Muon iterates in bf16, this file in fp32: the same step up to bf16's rounding.
        assert torch.nn.functional.cosine_similarity(moved, moved_reference, dim=0) > 0.999
        torch.testing.assert_close(mine, reference, rtol=0, atol=2e-3)


def test_a_transposed_convolution_is_orthogonalized_with_its_output_channels_first():
    layer = torch.nn.ConvTranspose2d(8, 3, 3)  # kernel [in 8, out 3, 3, 3]
    layer.weight.grad = torch.randn(layer.weight.shape)
    before = layer.weight.detach().clone()
    optimizer = muon.Muon([layer.weight], lr=0.1, momentum=0.0, out_dim=1)
    optimizer.step()
    matrix = layer.weight.grad.transpose(0, 1).flatten(1)  # [out 3, in 8 x 3 x 3]
    expected = muon.orthogonalize(matrix).unflatten(1, (8, 3, 3)).transpose(0, 1)
    torch.testing.assert_close(before - layer.weight.detach(), 0.1 * expected)


def test_a_kernel_without_a_gradient_is_left_alone_and_decay_shrinks_the_others():
    still, moving = torch.nn.Parameter(torch.ones(4, 9)), torch.nn.Parameter(torch.ones(4, 9))
    moving.grad = torch.zeros(4, 9)
    muon.Muon([still, moving], lr=0.1, weight_decay=0.5).step()
    assert torch.equal(still, torch.ones(4, 9))
    torch.testing.assert_close(moving.detach(), torch.full((4, 9), 1 - 0.1 * 0.5))
