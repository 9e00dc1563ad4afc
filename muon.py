"""Muon for the convolution kernels and AdamW for the other parameters, as one optimizer.

Muon (Keller Jordan, 2024: kellerjordan.github.io/posts/muon) keeps a Nesterov momentum of
each kernel's gradient, as SGD does, but steps along an orthogonalized copy of it: the
kernel seen as a matrix [out channels, in channels x 3 x 3], its singular values pushed
towards 1 by five Newton-Schulz iterations, so that every direction of the layer moves
at the same rate. It is what the speed records for convolution filters (airbench) and
transformers (modded-nanogpt) use. torch.optim.Muon takes only 2-D parameters, so this
file flattens each kernel itself; on 2-D matrices the update is torch.optim.Muon's.
Biases and BatchNorm parameters, and any kernel put in an AdamW group, step by AdamW.
"""

import math

import torch
import torch.nn as nn

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic, as torch.optim.Muon's
NEWTON_SCHULZ_STEPS = 5
EPS = 1e-7


def orthogonalize(matrix):
    """Five Newton-Schulz iterations that take `matrix` [rows, cols] to about U V^T of its SVD
    U S V^T (the singular values end between about 0.7 and 1.2, which is all Muon needs).

    The iteration X <- a X + (b G + c G^2) X, G = X X^T, keeps X = M X0 with M a polynomial
    in G0 = X0 X0^T, so it is run on M, a small square matrix (the shorter side), and X0
    is multiplied in once at the end: the same numbers up to rounding, at half the cost
    for the wide kernels here (X0 = 128 x 576: 1.5 ms instead of 3.1 on a 2-core Xeon).
    fp32: bf16 was slower for these small matrices even on a CPU with AMX.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = matrix.size(0) > matrix.size(1)
    wide = matrix.float().T if tall else matrix.float()
    wide = wide / wide.norm().clamp(min=EPS)  # the spectral norm at most 1, where the iteration converges
    start_gram = wide @ wide.T
    polynomial = None  # M, the identity before the first step
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = start_gram if polynomial is None else polynomial @ start_gram @ polynomial  # of X = M X0
        step = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        step.diagonal().add_(a)
        polynomial = step if polynomial is None else step @ polynomial
    orthogonal = polynomial @ wide
    return (orthogonal.T if tall else orthogonal).to(matrix.dtype)


def as_matrix(kernel, out_dim):
    """A kernel as [out channels, everything else]: Conv2d keeps out channels in dim 0,
    ConvTranspose2d in dim 1 ([in, out, k, k]); a 2-D parameter is its own matrix."""
    return kernel.transpose(0, out_dim).flatten(1)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over groups of two kinds, so that one scheduler sets every learning rate.

    A group with "muon": True holds kernels whose output channels lie in dimension
    "out_dim"; its keys are lr, momentum, weight_decay. Any other group is AdamW's (lr,
    betas, eps, weight_decay). Weight decay is decoupled in both: each step multiplies a
    parameter by 1 - lr * weight_decay.
    """

    def __init__(self, groups):
        defaults = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8,
                    "muon": False, "out_dim": 0}
        super().__init__(groups, defaults)

    @classmethod
    def for_convolutions(cls, model, lr, adamw_lr, momentum, weight_decay, adamw_layers=()):
        """Muon for the kernels of `model`'s Conv2d and ConvTranspose2d layers but those named in
        `adamw_layers`, AdamW for the rest; `weight_decay` for kernels only, as is usual."""
        layers = [module for name, module in model.named_modules()
                  if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and name not in adamw_layers]
        on_muon = {id(layer.weight) for layer in layers}
        muon = {"muon": True, "lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        return cls([
            {**muon, "out_dim": 0, "params": [m.weight for m in layers if isinstance(m, nn.Conv2d)]},
            {**muon, "out_dim": 1, "params": [m.weight for m in layers if isinstance(m, nn.ConvTranspose2d)]},
            {"lr": adamw_lr, "weight_decay": weight_decay,
             "params": [p for p in model.parameters() if p.dim() > 1 and id(p) not in on_muon]},
            {"lr": adamw_lr, "weight_decay": 0.0, "params": [p for p in model.parameters() if p.dim() <= 1]},
        ])

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self.muon_step if group["muon"] else self.adamw_step)(group, params)

    def muon_step(self, group, params):
        lr, momentum, out_dim = group["lr"], group["momentum"], group["out_dim"]
        for param in params:
            if not self.state[param]:
                self.state[param]["momentum_buffer"] = torch.zeros_like(param)
        buffers = [self.state[param]["momentum_buffer"] for param in params]
        grads = [param.grad for param in params]
        torch._foreach_lerp_(buffers, grads, 1 - momentum)
        updates = []
        for param, nesterov in zip(params, torch._foreach_lerp(grads, buffers, momentum)):
            matrix = as_matrix(nesterov, out_dim)
            rows, cols = matrix.shape
            update = orthogonalize(matrix).mul_(math.sqrt(max(1, rows / cols)))
            updates.append(update.unflatten(1, param.transpose(0, out_dim).shape[1:]).transpose(0, out_dim))
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-lr)

    def adamw_step(self, group, params):
        (beta1, beta2), lr = group["betas"], group["lr"]
        for param in params:
            if not self.state[param]:
                self.state[param].update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        states = [self.state[param] for param in params]
        for state in states:
            state["step"] += 1
        step = states[0]["step"]
        grads = [param.grad for param in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, math.sqrt(1 - beta2**step))
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-lr / (1 - beta1**step))
