"""Muon for the convolution kernels (Keller Jordan, 2024: kellerjordan.github.io/posts/muon). It
keeps a Nesterov momentum of each kernel's gradient, as SGD does, but steps along an orthogonalized
copy of it: the kernel as a matrix [out channels, in channels x 3 x 3], its singular values pushed
towards 1, so that every direction of the layer moves at the same rate. torch.optim.Muon (torch
2.9 on) takes 2-D parameters only; on those the update is its.
"""

import torch

# The quintic X <- a X + b (X X^T) X + c (X X^T)^2 X. Its steep slope at 0 (a = 3.4) lifts small
# singular values to about 1 within five steps, at the price of leaving them anywhere between
# about 0.7 and 1.2 rather than at 1 exactly, which is all Muon needs (Muon's and torch's own).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5
EPS = 1e-7

def orthogonalize(matrix):
    """About U V^T of `matrix` = U S V^T, by Newton-Schulz iterations X <- a X + (b G + c G^2) X,
    G = X X^T."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.float().T if tall else matrix.float()  # wide: the Gram matrix is the smaller one
    x = x / x.norm().clamp(min=EPS)  # the spectral norm at most 1, where the iteration converges
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.addmm(x, polynomial, x, beta=a)  # a X + (b G + c G^2) X
    return (x.T if tall else x).to(matrix.dtype)

class Muon(torch.optim.Optimizer):
    """Muon for kernels whose output channels are dimension `out_dim` (0: Conv2d, 1:
    ConvTranspose2d), its weight decay decoupled as AdamW's: a kernel times 1 - lr * decay."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0, out_dim=0):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "out_dim": out_dim}
        super().__init__(params, defaults)

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
                matrix = nesterov.flatten(1)  # [out channels, in channels x 3 x 3]
                # Scaled so that a tall matrix's update is as large per entry as a wide one's.
                scale = max(1, matrix.size(0) / matrix.size(1)) ** 0.5
                update = orthogonalize(matrix) * scale
                kernel.mul_(1 - lr * group["weight_decay"])
                kernel.add_(update.view_as(nesterov).transpose(0, out_dim), alpha=-lr)
