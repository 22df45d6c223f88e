"""Random geometric variation of synthetic images (``algorithm.synthesis.augment``).

The averaged VTC draws one template per class (RESULTS.md §1, "class templates"): every image of a
class is nearly the same. A small random rotation, scaling and shift of each image gives a client
the variety of pose that real digits have and the decoder does not draw. It is the same kind of
variety for every client and every architecture, learned by no one: a reading to measure against
the style code, which learns its variety from the clients' images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# At strength 1: rotations up to ±20 degrees, scales 0.85-1.15, shifts up to ±10 % of the image side.
MAX_DEGREES = 20.0
MAX_SCALE_CHANGE = 0.15
MAX_SHIFT = 0.2  # in affine_grid's coordinates, which span [-1, 1]: 0.2 is 10 % of the side


def random_affine(images: torch.Tensor, *, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Each of ``images`` (n, c, h, w) rotated, scaled and shifted by its own random amounts.

    The amounts are uniform up to ``strength`` times the maxima above, drawn from ``generator`` (on
    the CPU, so the same seed gives the same images on any device). Pixels that come in from outside
    the image repeat its border, which in MNIST and CIFAR is background-like; bilinear resampling.
    ``strength == 0`` returns ``images`` unchanged and draws nothing.
    """
    if strength < 0:
        raise ValueError(f"augment strength must be >= 0, got {strength}")
    if strength == 0 or len(images) == 0:
        return images
    n = len(images)
    uniform = torch.rand(n, 4, generator=generator) * 2 - 1  # in [-1, 1): angle, scale, shift x, shift y
    angle = uniform[:, 0] * math.radians(MAX_DEGREES) * strength
    scale = 1 + uniform[:, 1] * MAX_SCALE_CHANGE * strength
    shift = uniform[:, 2:] * MAX_SHIFT * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps each output position to where it samples the input.
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
