"""Muon for the convolution kernels (train.py gives every other parameter to torch.optim.AdamW).

Muon (Keller Jordan, 2024: kellerjordan.github.io/posts/muon) keeps a Nesterov momentum of each
kernel's gradient, as SGD does, but steps along an orthogonalized copy of it: the kernel seen as a
matrix [out channels, in channels x 3 x 3], its singular values pushed towards 1 by five
Newton-Schulz iterations, so that every direction of the layer moves at the same rate.
torch.optim.Muon (torch 2.9 and later) takes 2-D parameters only; on those the update is its.
"""

import torch

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic, as torch.optim.Muon's
NEWTON_SCHULZ_STEPS = 5
EPS = 1e-7


def orthogonalize(matrix):
    """About U V^T of the SVD U S V^T of `matrix`, by Newton-Schulz iterations X <- a X + (b G + c G^2) X
    with G = X X^T; the singular values end between about 0.7 and 1.2, which is all Muon needs."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = matrix.size(0) > matrix.size(1)  # iterated wide, where the Gram matrix is the smaller one
    x = matrix.float().T if tall else matrix.float()
    x = x / x.norm().clamp(min=EPS)  # the spectral norm at most 1, where the iteration converges
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for kernels whose output channels lie in dimension `out_dim` (0: Conv2d, 1: ConvTranspose2d);
    weight decay is decoupled, as AdamW's: each step multiplies a kernel by 1 - lr * weight_decay."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0, out_dim=0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "out_dim": out_dim})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, out_dim = group["lr"], group["momentum"], group["out_dim"]
            for kernel in group["params"]:
                if kernel.grad is None:
                    continue
                state = self.state[kernel]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(kernel)
                buffer = state["momentum_buffer"].lerp_(kernel.grad, 1 - momentum)
                nesterov = kernel.grad.lerp(buffer, momentum).transpose(0, out_dim)
                matrix = nesterov.flatten(1)
                update = orthogonalize(matrix) * max(1, matrix.size(0) / matrix.size(1)) ** 0.5
                kernel.mul_(1 - lr * group["weight_decay"])
                kernel.add_(update.view_as(nesterov).transpose(0, out_dim), alpha=-lr)
