"""The convolutional autoencoder, layer for layer as the reference project.

28x28 digit -> encoder -> 128 numbers -> decoder -> 28x28 reconstruction.
The module names (encoder.0.0.weight, ...) match the reference checkpoint, so its
trained weights load with strict=True. `load_checkpoint` is the one safe loader.

Run `python model.py` to print the layer table.
"""

import numpy as np
import torch
import torch.nn as nn

LATENT_DIM = 128

# The reference saved `loss` as a numpy float64. Unpickling one needs numpy's scalar
# constructor, which numpy 1 names numpy.core.multiarray.scalar and numpy 2
# numpy._core.multiarray.scalar, and the float64 dtype; nothing else is allowed. The
# constructor is taken from numpy's public pickling hook, so this works under both.
NUMPY_SCALAR = np.float64(0).__reduce__()[0]
NUMPY_FLOAT64_GLOBALS = [
    (NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.float64)),
]


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message says why."""


def conv_block(in_channels, out_channels, padding):
    """Conv -> BatchNorm -> 2x2 max-pool -> ELU, as the reference's encoder blocks."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(2),
        nn.ELU(),
    )


def deconv_block(in_channels, out_channels, padding):
    """2x upsample -> transposed conv -> BatchNorm -> ELU, as the reference's decoder blocks."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2),
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size=3, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ELU(),
    )


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            conv_block(1, 16, padding=1),  # 28 -> 28 -> 14
            conv_block(16, 32, padding=0),  # 14 -> 12 -> 6
            conv_block(32, 64, padding=1),  # 6 -> 6 -> 3
            nn.Conv2d(64, LATENT_DIM, kernel_size=3),  # 3 -> 1
            nn.Flatten(),
        )
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (LATENT_DIM, 1, 1)),
            nn.ConvTranspose2d(LATENT_DIM, 64, kernel_size=3),  # 1 -> 3
            deconv_block(64, 32, padding=1),  # 3 -> 6 -> 6
            deconv_block(32, 16, padding=0),  # 6 -> 12 -> 14
            deconv_block(16, 1, padding=1),  # 14 -> 28 -> 28
        )
        self.apply(init_weights)

    def forward(self, x):
        latent = self.encoder(x)
        return self.decoder(latent), latent


def init_weights(module):
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def layer_table(model, input_size=(1, 1, 28, 28)):
    """Rows of (name like 'Conv2d-1', output shape, parameter count) for each leaf layer."""
    rows, hooks = [], []
    leaves = [m for m in model.modules() if not list(m.children())]

    def record(module, _inputs, output):
        params = sum(p.numel() for p in module.parameters())
        rows.append((f"{type(module).__name__}-{len(rows) + 1}", [-1, *output.shape[1:]], params))

    for leaf in leaves:
        hooks.append(leaf.register_forward_hook(record))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_size))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return rows


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint safely (weights_only) and return (model, checkpoint dict).

    Raises CheckpointError with a one-line reason for anything a user can get wrong:
    a missing, empty, truncated or foreign file, or weights of another architecture.
    """
    try:
        with torch.serialization.safe_globals(NUMPY_FLOAT64_GLOBALS):
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except Exception as error:
        raise CheckpointError(f"{path}: not a loadable PyTorch checkpoint ({first_line(error)[:200]})") from None
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: has no 'model_state_dict'; is it a checkpoint of this project?")
    model = AutoEncoder().to(device)
    load_model_weights(model, checkpoint["model_state_dict"], path)
    return model, checkpoint


def first_line(error):
    """An exception's message cut to one line (its type's name where it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_model_weights(model, state_dict, path):
    """Copy weights into `model`, naming the first tensor that does not fit."""
    expected = model.state_dict()
    for name, tensor in state_dict.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, this model needs "
                f"{tuple(expected[name].shape)}; the checkpoint is of another architecture"
            )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint is of another architecture "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    model.load_state_dict(state_dict, strict=True)


def main():
    model = AutoEncoder()
    print(f"{'Layer (type)':<22}{'Output Shape':<22}{'Param #':>10}")
    print("-" * 54)
    for name, shape, params in layer_table(model):
        print(f"{name:<22}{str(shape):<22}{params:>10,}")
    print("-" * 54)
    total = sum(p.numel() for p in model.parameters())
    print(f"Total params: {total:,}")


if __name__ == "__main__":
    main()
