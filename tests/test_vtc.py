"""The VTC decoder's shapes, value range and shared-weight helpers."""

import numpy as np
import pytest
import torch

from fedvtc.vtc import VTC, load_shared_arrays, shared_arrays, shared_shapes, upsampling_steps


@pytest.mark.parametrize("size,channels,steps", [(28, 1, 2), (32, 3, 2), (64, 3, 3)])
def test_shapes_and_range(size, channels, steps):
    mean, std = [0.5] * channels, [0.25] * channels
    vtc = VTC(16, size, channels, mean, std, width=8)
    assert upsampling_steps(size) == steps
    out = vtc(torch.randn(5, 16) * 10)
    assert out.shape == (5, channels, size, size)
    # tanh output lands in the normalized image of [0, 1]: [(0 - m)/s, (1 - m)/s]
    assert out.min() >= (0 - 0.5) / 0.25 - 1e-5 and out.max() <= (1 - 0.5) / 0.25 + 1e-5
    pixels = vtc.to_pixels(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_bad_image_size():
    with pytest.raises(ValueError):
        VTC(8, 30, 1, [0.5], [0.5])


def test_shared_arrays_round_trip():
    a, b = VTC(8, 28, 1, [0.5], [0.5]), VTC(8, 28, 1, [0.5], [0.5])
    arrays = shared_arrays(a)
    assert [x.shape for x in arrays] == shared_shapes(b)
    load_shared_arrays(b, arrays)
    for x, y in zip(shared_arrays(b), arrays):
        np.testing.assert_array_equal(x, y)
    z = torch.randn(3, 8)
    a.eval(), b.eval()
    torch.testing.assert_close(a(z), b(z))
