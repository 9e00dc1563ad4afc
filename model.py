"""The convolutional autoencoder, layer for layer as the reference project's (its checkpoint loads
with strict=True): a 28x28 digit -> encoder -> 128 numbers, its code -> decoder -> a 28x28 digit.
Also its error on a set of images, and the safe loader of its checkpoints. Pasted into a notebook
cell, this file defines them and prints nothing: `print(AutoEncoder())` shows the layers.
"""

import numpy as np
import torch
import torch.nn as nn

LATENT_DIM = 128
# The reference's `loss` is a numpy float64, unpickled by these (numpy 1's and 2's names) alone.
NUMPY_SCALAR = np.float64(0).__reduce__()[0]
NUMPY_FLOAT64_GLOBALS = [(NUMPY_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
                         (NUMPY_SCALAR, "numpy._core.multiarray.scalar"), type(np.dtype("f8"))]

class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message says why."""

def conv_block(in_channels, out_channels, padding):
    """Conv, then BatchNorm, 2x2 max-pool and ELU, as the reference's encoder blocks."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=padding)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.MaxPool2d(2), nn.ELU())

def deconv_block(in_channels, out_channels, padding):
    """2x upsample, then a transposed conv, BatchNorm and ELU, as the reference's decoder blocks."""
    deconv = nn.ConvTranspose2d(in_channels, out_channels, 3, padding=padding)
    upsample = nn.Upsample(scale_factor=2)
    return nn.Sequential(upsample, deconv, nn.BatchNorm2d(out_channels), nn.ELU())

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
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        """Images [B, 1, 28, 28] in [0, 1] -> a tuple (reconstructions [B, 1, 28, 28], codes
        [B, 128]), as the reference's forward. The reconstructions are not clamped: ELU lets
        them stray a little outside [0, 1], so clamp them to show them."""
        code = self.encoder(x)
        return self.decoder(code), code

def per_image_mse(model, images, batch_size=200):
    """The mean squared error of each image's reconstruction, `images` uint8 [N, 28, 28] scaled as
    ToTensor does; float64 [N] on the CPU, in fp32 on every device, so all are measured alike."""
    model.eval()
    errors = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].unsqueeze(1).float() / 255
            errors.append((model(x)[0] - x).pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(errors).cpu().double()

def first_line(error):
    """An exception's message cut to one line (its type's name where it has none)."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__

def load_checkpoint(path, device="cpu"):
    """(model, checkpoint dict) of a checkpoint loaded safely (weights_only); a CheckpointError
    says in one line what is wrong with a missing, empty, truncated or foreign file."""
    try:
        with torch.serialization.safe_globals(NUMPY_FLOAT64_GLOBALS):
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except OSError as error:
        raise CheckpointError(f"{path}: {error.strerror or error}") from None
    except Exception as error:
        reason = first_line(error)
        raise CheckpointError(f"{path}: not a loadable PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model_state_dict"), dict):
        raise CheckpointError(f"{path}: no 'model_state_dict'; is it a checkpoint of this project?")
    state = checkpoint["model_state_dict"]
    for prefix in ("module.", "_orig_mod.", "module."):  # DataParallel's and torch.compile's
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    with torch.random.fork_rng(devices=[]):  # the weights are the file's: the seed is left alone
        model = AutoEncoder().to(device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        mismatches = " ".join(str(error).split()[6:])[:300]  # torch's message lists every one
        raise CheckpointError(f"{path}: weights of another model ({mismatches})") from None
    return model, checkpoint
