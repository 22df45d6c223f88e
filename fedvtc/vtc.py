"""The variational transposed-convolution (VTC) decoder: features in R^p -> images (METHOD.md §4).

Linear(p -> c0 * s0^2) -> reshape -> [ConvTranspose2d(k=4, s=2, p=1) -> BatchNorm -> LeakyReLU] x n
-> Conv2d 3x3 -> tanh, with n = 2 for 28x28 and 32x32 images (7 -> 14 -> 28, 8 -> 16 -> 32) and
n = 3 for 64x64 (8 -> 16 -> 32 -> 64). The tanh output in [-1, 1] is mapped to pixels in [0, 1] and
then normalized with the dataset's mean and std, so generated images live in exactly the space the
classifiers were trained on and can be mixed with real batches directly.

With ``style_dim`` k > 0 (a reading, not METHOD.md) the VTC also reads a k-dimensional *style code*
u: a small encoder of images, part of the VTC and so shared and averaged with it, gives q(u | x) =
N(mu(x), diag(exp(logvar(x)))) in training, and u ~ N(0, I) at synthesis. The features carry the
class; the style code carries what varies within a class in pixel space, which every client
shares, whatever its extractor (RESULTS.md §1, "why": averaging decoders of differently built
feature spaces keeps only the class means).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from fedvtc.data import to_unit_pixels


def upsampling_steps(image_size: int) -> int:
    """Number of stride-2 transposed convolutions: 2, or more while the start stays above 8 px."""
    steps = 2
    while image_size // 2 ** (steps + 1) >= 8 and image_size % 2 ** (steps + 1) == 0:
        steps += 1
    if image_size % 2**steps:
        raise ValueError(f"the VTC needs an image size divisible by {2 ** steps}, got {image_size}")
    return steps


class VTC(nn.Module):
    """Decoder from a p-dimensional latent to a normalized image.

    Args:
        feature_dim: p, the size of the latents (the clients' feature size).
        image_size: output height and width.
        channels: output image channels.
        mean, std: the dataset's per-channel normalization, applied to the [0, 1] output.
        width: channels of the last upsampling block; earlier blocks double it.
        style_dim: k, the size of the style code (0 = none, METHOD.md's VTC).
        style_classes: C > 0 lets the style encoder also read the image's class (one-hot), as a
            conditional VAE's encoder does, q(u | x, y): the code then need not tell classes apart,
            and every class's codes can fill the prior that synthesis draws from. 0 = q(u | x).
    """

    def __init__(
        self,
        feature_dim: int,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        width: int = 16,
        style_dim: int = 0,
        style_classes: int = 0,
    ) -> None:
        super().__init__()
        steps = upsampling_steps(image_size)
        self.start_size = image_size // 2**steps
        widths = [width * 2 ** (steps - i) for i in range(steps + 1)]
        self.start_channels = widths[0]
        self.style_dim = style_dim
        self.style_classes = style_classes
        self.project = nn.Linear(feature_dim + style_dim, widths[0] * self.start_size**2)
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2),
            ]
        self.upsample = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(widths[-1], channels, kernel_size=3, padding=1)
        # The mirror of the upsampling path, without BatchNorm (it reads one client's batches):
        # image -> stride-2 convolutions (-> with the one-hot class) -> (mu, logvar) of the style code.
        self.style_encoder: nn.Module | None = None
        self.style_head: nn.Module | None = None
        if style_dim:
            down: list[nn.Module] = []
            for c_in, c_out in zip([channels] + widths[::-1][1:-1], widths[::-1][1:]):
                down += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            self.style_encoder = nn.Sequential(*down, nn.Flatten())
            self.style_head = nn.Linear(widths[0] * self.start_size**2 + style_classes, 2 * style_dim)
        # Not persistent: constants of the dataset, never saved or sent.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def encode_style(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(u | x), or of q(u | x, y) with ``style_classes``, each (n, style_dim),
        for normalized images and (with ``style_classes``) their labels."""
        if self.style_encoder is None or self.style_head is None:
            raise ValueError("this VTC has no style code (style_dim=0)")
        h = self.style_encoder(images)
        if self.style_classes:
            if labels is None:
                raise ValueError("this VTC's style encoder reads the class: pass the images' labels")
            h = torch.cat([h, nn.functional.one_hot(labels, self.style_classes).to(h.dtype)], dim=1)
        mu, logvar = self.style_head(h).chunk(2, dim=1)
        return mu, logvar

    def forward(self, latents: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Decode (n, p) latents; with a style code, ``style`` is (n, k), None meaning its prior mean 0."""
        if self.style_dim:
            if style is None:
                style = latents.new_zeros(len(latents), self.style_dim)
            latents = torch.cat([latents, style], dim=1)
        h = self.project(latents).view(-1, self.start_channels, self.start_size, self.start_size)
        if h.device.type == "cpu":
            # The CPU's transposed convolutions are faster in channels-last: a quarter off a
            # round's synthesis, a tenth off its VTC pass on the table's cell (RESULTS.md §2). The
            # images are the default layout's up to float rounding (tests/test_vtc.py), and leave
            # in the default layout.
            h = h.contiguous(memory_format=torch.channels_last)
        pixels = (torch.tanh(self.to_image(self.upsample(nn.functional.leaky_relu(h, 0.2)))) + 1) / 2
        return ((pixels - self.pixel_mean) / self.pixel_std).contiguous()

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalization: images in [0, 1], e.g. for saving a grid."""
        return to_unit_pixels(images, self.pixel_mean, self.pixel_std)


class AdaptedVTC(nn.Module):
    """A VTC behind a private map of its latents (``vtc.adapter``): decodes ``vtc(adapter(v), u)``.

    Called like the VTC it wraps, so training and synthesis need not know whether a client has an
    adapter. Only ``vtc`` is shared; the adapter stays on the client.
    """

    def __init__(self, adapter: nn.Module, vtc: VTC) -> None:
        super().__init__()
        self.adapter = adapter  # registered first: the optimizer's parameter order is adapter, VTC
        self.vtc = vtc
        self.style_dim = vtc.style_dim

    def encode_style(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vtc.encode_style(images, labels)

    def forward(self, latents: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return self.vtc(self.adapter(latents), style)


def shared_arrays(module: nn.Module) -> list[np.ndarray]:
    """The floating-point state of a module, in state-dict order: what a shared VTC sends.

    Integer buffers (BatchNorm's batch counter) stay local: they are not averaged.
    """
    return [v.detach().cpu().numpy() for v in module.state_dict().values() if v.is_floating_point()]


def shared_shapes(module: nn.Module) -> list[tuple[int, ...]]:
    """Shapes of ``shared_arrays(module)``, to validate what a peer sends."""
    return [tuple(v.shape) for v in module.state_dict().values() if v.is_floating_point()]


def load_shared_arrays(module: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Load arrays produced by ``shared_arrays`` (e.g. the FedAvg of several clients') into a module."""
    state = module.state_dict()
    keys = [k for k, v in state.items() if v.is_floating_point()]
    if len(keys) != len(arrays):
        raise ValueError(f"expected {len(keys)} arrays, got {len(arrays)}")
    for key, array in zip(keys, arrays):
        state[key] = torch.as_tensor(np.asarray(array), dtype=state[key].dtype)
    module.load_state_dict(state)
