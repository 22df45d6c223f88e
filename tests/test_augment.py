"""fedvtc.augment: the random pose given to synthetic images (algorithm.synthesis.augment)."""

from __future__ import annotations

import pytest
import torch

from fedvtc.augment import random_affine


def _digits(n: int = 6) -> torch.Tensor:
    """n one-channel 28x28 images: a bright vertical bar on a dark background, as MNIST's range has."""
    images = torch.full((n, 1, 28, 28), -0.4)
    images[:, :, 6:22, 12:16] = 2.8
    return images


def test_strength_zero_is_the_identity_and_draws_nothing() -> None:
    images, generator = _digits(), torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert random_affine(images, strength=0.0, generator=generator) is images
    assert torch.equal(generator.get_state(), state)


def test_each_image_gets_its_own_pose_and_the_seed_fixes_it() -> None:
    images = _digits()
    posed = random_affine(images, strength=1.0, generator=torch.Generator().manual_seed(1))
    again = random_affine(images, strength=1.0, generator=torch.Generator().manual_seed(1))
    other = random_affine(images, strength=1.0, generator=torch.Generator().manual_seed(2))
    assert posed.shape == images.shape and torch.equal(posed, again) and not torch.equal(posed, other)
    # Identical inputs come out different from one another: every image has its own pose.
    differences = [(posed[i] - posed[0]).abs().max() for i in range(1, len(posed))]
    assert min(differences) > 0.1


def test_the_pose_keeps_the_range_and_the_background() -> None:
    """Bilinear resampling with border padding: no value outside the input's range, the corners (far
    from the bar) stay background, and a weak pose moves the image less than a strong one."""
    images = _digits(32)
    weak = random_affine(images, strength=0.2, generator=torch.Generator().manual_seed(3))
    strong = random_affine(images, strength=1.0, generator=torch.Generator().manual_seed(3))
    for posed in (weak, strong):
        assert posed.min() >= images.min() - 1e-5 and posed.max() <= images.max() + 1e-5
        assert torch.allclose(posed[:, :, 0, 0], torch.full((32, 1), -0.4), atol=1e-5)
    assert (weak - images).abs().mean() < (strong - images).abs().mean()


def test_a_negative_strength_is_refused() -> None:
    with pytest.raises(ValueError, match="augment strength must be >= 0"):
        random_affine(_digits(), strength=-1.0, generator=torch.Generator())
