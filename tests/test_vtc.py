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


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_decoding_in_channels_last_gives_the_default_layouts_images(size, channels):
    """On CPU the decoder computes in channels-last (faster there); the images are those of the
    default layout, and come back in it."""
    torch.manual_seed(0)
    vtc = VTC(16, size, channels, [0.5] * channels, [0.25] * channels).eval()
    z = torch.randn(64, 16)
    with torch.no_grad():
        out = vtc(z)
        h = vtc.project(z).view(-1, vtc.start_channels, vtc.start_size, vtc.start_size)
        default = (torch.tanh(vtc.to_image(vtc.upsample(torch.nn.functional.leaky_relu(h, 0.2)))) + 1) / 2
        default = (default - vtc.pixel_mean) / vtc.pixel_std
    assert out.is_contiguous()
    torch.testing.assert_close(out, default)


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


def _vtc_training_case(**kwargs):
    """A tiny model, VTC and two-class target; returns the parameters before and after train_vtc."""
    from fedvtc.data import ImageSet
    from fedvtc.training import GlobalGaussians, train_vtc
    from fedvtc.zoo import create_model

    torch.manual_seed(0)
    model = create_model("cnn_s", num_classes=3, feature_dim=8, in_channels=1, image_size=28)
    vtc = VTC(8, 28, 1, [0.5], [0.5], width=4, style_dim=kwargs.pop("style_dim", 0),
              style_classes=kwargs.pop("style_classes", 0))
    data = ImageSet(torch.randn(16, 1, 28, 28), torch.tensor([0, 1] * 8))
    target = GlobalGaussians(
        present=torch.tensor([True, True, False]), means=torch.randn(3, 8), variances=torch.ones(3, 8),
        second=torch.ones(3, 8),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vtc_before = [p.clone() for p in vtc.parameters()]
    encoder = torch.optim.SGD(model.parameters(), lr=0.1) if kwargs.pop("encoder", False) else None
    losses = train_vtc(vtc, model, data, torch.optim.Adam(vtc.parameters(), 1e-2), target, steps=3, batch_size=8,
                       generator=torch.Generator().manual_seed(0), dm_weight=1.0, dm_per_class=2,
                       encoder_optimizer=encoder, **kwargs)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    vtc_changed = any(not torch.equal(a, b) for a, b in zip(vtc_before, vtc.parameters()))
    return changed, vtc_changed, losses


def test_style_code_shapes_and_prior_mean():
    """A VTC with a style code encodes images to (mu, logvar) of size k; no code means the prior's
    mean 0; the code is part of what a shared VTC sends."""
    vtc = VTC(8, 28, 1, [0.5], [0.5], width=4, style_dim=3).eval()
    mu, logvar = vtc.encode_style(torch.randn(5, 1, 28, 28))
    assert mu.shape == logvar.shape == (5, 3)
    z = torch.randn(5, 8)
    torch.testing.assert_close(vtc(z), vtc(z, torch.zeros(5, 3)))
    assert not torch.allclose(vtc(z), vtc(z, torch.randn(5, 3) * 3))
    assert len(shared_shapes(vtc)) > len(shared_shapes(VTC(8, 28, 1, [0.5], [0.5], width=4)))
    with pytest.raises(ValueError, match="no style code"):
        VTC(8, 28, 1, [0.5], [0.5]).encode_style(torch.randn(1, 1, 28, 28))


def test_a_style_encoder_that_reads_the_class():
    """style_classes: q(u | x, y), so the same image gives another code under another label; it
    needs the labels, and it adds C inputs to the encoder's last layer only."""
    vtc = VTC(8, 28, 1, [0.5], [0.5], width=4, style_dim=3, style_classes=10).eval()
    x = torch.randn(2, 1, 28, 28).repeat(2, 1, 1, 1)
    mu, _ = vtc.encode_style(x, torch.tensor([0, 1, 7, 7]))
    assert not torch.allclose(mu[:2], mu[2:])
    with pytest.raises(ValueError, match="pass the images' labels"):
        vtc.encode_style(x)
    plain = VTC(8, 28, 1, [0.5], [0.5], width=4, style_dim=3)
    extra = sum(p.numel() for p in vtc.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 10 * 2 * 3


def test_style_code_trains_with_its_kl_and_varies_the_images():
    """Training reports the style KL and moves the style encoder; synthesis draws a code per image,
    so two images of one class from the same latent mean differ, and the latents are the same
    draws as without a code (the codes are drawn after them)."""
    from fedvtc.training import GlobalGaussians, synthesize

    torch.manual_seed(0)
    for style_classes in (0, 3):
        changed, vtc_changed, losses = _vtc_training_case(style_dim=3, style_classes=style_classes)
        assert vtc_changed and changed == set() and losses["vtc_style_kl"] > 0
    vtc = VTC(8, 28, 1, [0.5], [0.5], width=4, style_dim=3)
    target = GlobalGaussians(present=torch.tensor([True, True]), means=torch.randn(2, 8),
                             variances=torch.full((2, 8), 1e-8), second=torch.full((2, 8), 1e-8))
    images = synthesize(vtc, target, per_class=4, generator=torch.Generator().manual_seed(0))
    assert images.x.shape == (8, 1, 28, 28)
    assert images.x[:4].std(0).mean() > 1e-3  # near-identical latents, different codes
    plain = synthesize(vtc, target, per_class=4, generator=torch.Generator().manual_seed(0), noise_scale=0.0)
    assert not torch.equal(plain.x, images.x)


def test_vtc_training_leaves_the_classifier_alone():
    changed, vtc_changed, losses = _vtc_training_case()
    assert vtc_changed and changed == set()
    assert losses["vtc_rec_loss"] > 0 and losses["vtc_dm_loss"] > 0


def test_vae_reading_trains_the_extractor_not_the_head():
    changed, vtc_changed, _ = _vtc_training_case(encoder=True)
    assert vtc_changed
    assert any(k.startswith("extractor.") for k in changed) and not any(k.startswith("head.") for k in changed)


def test_dm_in_the_classifier_output_space():
    changed, vtc_changed, losses = _vtc_training_case(dm_space="logits")
    assert vtc_changed and changed == set() and losses["vtc_dm_loss"] > 0
    with pytest.raises(ValueError, match="dm_space"):
        _vtc_training_case(dm_space="pixels")


def test_vtc_budget_scales_with_the_data():
    from fedvtc.algorithms.fedvtc import VTCSettings

    assert VTCSettings(steps=60, epochs=None).steps_for(1000) == 60
    assert VTCSettings(epochs=1.0, batch_size=32).steps_for(480) == 15
    assert VTCSettings(epochs=0.5, batch_size=32).steps_for(481) == 8  # half of 16 batches
    assert VTCSettings(epochs=0.01, batch_size=32).steps_for(10) == 1  # never zero


def test_latent_noise_scale():
    from fedvtc.stats import sample_latents

    means, variances, labels = torch.randn(2, 4), torch.ones(2, 4) * 4, torch.tensor([0, 1, 1])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    full = sample_latents(means, variances, labels, generator=g())
    half = sample_latents(means, variances, labels, generator=g(), scale=0.5)
    torch.testing.assert_close(half - means[labels], 0.5 * (full - means[labels]))
    torch.testing.assert_close(sample_latents(means, variances, labels, generator=g(), scale=0.0), means[labels])


def test_train_noise_scales_the_noise_on_the_features():
    """train_noise=0 decodes the features as they are; 1 adds sigma_y-wide noise (METHOD.md §2):
    one full-batch step with a learning rate of 0 reports exactly the reconstruction of the input."""
    from fedvtc.data import ImageSet
    from fedvtc.training import GlobalGaussians, train_vtc
    from fedvtc.zoo import create_model

    torch.manual_seed(0)
    model = create_model("cnn_s", num_classes=2, feature_dim=8, in_channels=1, image_size=28)
    vtc = VTC(8, 28, 1, [0.5], [0.5], width=4)
    data = ImageSet(torch.randn(12, 1, 28, 28), torch.tensor([0, 1] * 6))
    target = GlobalGaussians(present=torch.tensor([True, True]), means=torch.zeros(2, 8),
                             variances=torch.full((2, 8), 4.0), second=torch.full((2, 8), 4.0))

    def loss(noise: float) -> float:
        return train_vtc(vtc, model, data, torch.optim.SGD(vtc.parameters(), lr=0.0), target, steps=1, batch_size=12,
                         generator=torch.Generator().manual_seed(0), dm_weight=0.0, dm_per_class=1,
                         train_noise=noise)["vtc_rec_loss"]

    model.eval(), vtc.train()
    with torch.no_grad():
        clean = float(torch.nn.functional.mse_loss(vtc(model.forward_features(data.x)), data.x))
    assert loss(0.0) == pytest.approx(clean, rel=1e-5)
    assert loss(1.0) != pytest.approx(clean, rel=1e-3)


def test_the_class_mean_input_decodes_the_pooled_gaussian_whatever_the_extractor():
    """train_input=class_mean: the decoder trains on c^y + sigma_y * eps, so two clients with
    different extractors (and the same seed) train it identically; with features they do not.
    Without noise, one step at learning rate 0 reports the reconstruction from the class means."""
    from fedvtc.data import ImageSet
    from fedvtc.training import GlobalGaussians, train_vtc
    from fedvtc.zoo import create_model

    data = ImageSet(torch.randn(12, 1, 28, 28), torch.tensor([0, 1, 2] * 4))
    target = GlobalGaussians(present=torch.tensor([True, True, True]), means=torch.randn(3, 8),
                             variances=torch.full((3, 8), 0.5), second=torch.full((3, 8), 0.5))

    def trained_vtc(extractor_seed: int, train_input: str) -> list[torch.Tensor]:
        torch.manual_seed(extractor_seed)
        model = create_model("cnn_s", num_classes=3, feature_dim=8, in_channels=1, image_size=28)
        torch.manual_seed(0)
        vtc = VTC(8, 28, 1, [0.5], [0.5], width=4)
        train_vtc(vtc, model, data, torch.optim.Adam(vtc.parameters(), 1e-2), target, steps=3, batch_size=4,
                  generator=torch.Generator().manual_seed(0), dm_weight=0.0, dm_per_class=2, train_input=train_input)
        return [p.detach().clone() for p in vtc.parameters()]

    same = [torch.equal(a, b) for a, b in zip(trained_vtc(1, "class_mean"), trained_vtc(2, "class_mean"))]
    differ = [torch.equal(a, b) for a, b in zip(trained_vtc(1, "features"), trained_vtc(2, "features"))]
    assert all(same) and not all(differ)

    torch.manual_seed(0)
    vtc = VTC(8, 28, 1, [0.5], [0.5], width=4).train()
    model = create_model("cnn_s", num_classes=3, feature_dim=8, in_channels=1, image_size=28)
    with torch.no_grad():
        expected = float(torch.nn.functional.mse_loss(vtc(target.means[data.y]), data.x))
    reported = train_vtc(vtc, model, data, torch.optim.SGD(vtc.parameters(), lr=0.0), target, steps=1, batch_size=12,
                         generator=torch.Generator().manual_seed(0), dm_weight=0.0, dm_per_class=2,
                         train_noise=0.0, train_input="class_mean")["vtc_rec_loss"]
    assert reported == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="train_input must be one of"):
        train_vtc(vtc, model, data, torch.optim.SGD(vtc.parameters(), lr=0.0), target, steps=1, batch_size=12,
                  generator=torch.Generator(), dm_weight=0.0, dm_per_class=2, train_input="pixels")


@pytest.mark.parametrize("norm_stats", ["update", "frozen"])
def test_finetuning_moves_batchnorm_statistics_only_when_asked(norm_stats):
    """``finetune.norm_stats=frozen``: the weights learn, BatchNorm's running statistics stay."""
    from fedvtc.data import ImageSet
    from fedvtc.training import finetune
    from fedvtc.zoo import create_model

    torch.manual_seed(0)
    model = create_model("cnn_s", num_classes=3, feature_dim=8, in_channels=1, image_size=28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ImageSet(torch.randn(16, 1, 28, 28) + 3.0, torch.tensor([0, 1] * 8))  # far from the init stats
    finetune(model, data, torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=8,
             generator=torch.Generator().manual_seed(0), norm_stats=norm_stats)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    stats = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert stats, "cnn_s has BatchNorm"
    assert any(k.endswith("weight") for k in changed)
    assert (stats <= changed) if norm_stats == "update" else not (stats & changed)
    assert model.training


def test_an_unknown_norm_stats_is_refused():
    from fedvtc.training import finetune

    with pytest.raises(ValueError, match="norm_stats"):
        finetune(None, None, None, epochs=1, batch_size=1, generator=None, norm_stats="sometimes")


def test_vtc_training_reads_given_features_as_it_would_compute_them():
    """Given the frozen extractor's features of the data (what a client extracts once for its
    statistics too), train_vtc trains the decoder as when each step runs the extractor: number for
    number with these batches (one of a few images may round differently)."""
    from fedvtc.data import ImageSet
    from fedvtc.training import GlobalGaussians, extract_features, train_vtc
    from fedvtc.zoo import create_model

    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=3, feature_dim=8, in_channels=1, image_size=28)
    data = ImageSet(torch.randn(40, 1, 28, 28), torch.tensor([0, 1] * 20))
    target = GlobalGaussians(present=torch.tensor([True, True, False]), means=torch.randn(3, 8),
                             variances=torch.ones(3, 8), second=torch.ones(3, 8))
    start = VTC(8, 28, 1, [0.5], [0.5], width=4).state_dict()
    runs = []
    for features in (None, extract_features(model, data.x)):
        vtc = VTC(8, 28, 1, [0.5], [0.5], width=4)
        vtc.load_state_dict(start)
        losses = train_vtc(vtc, model, data, torch.optim.Adam(vtc.parameters(), 1e-2), target, steps=4, batch_size=16,
                           generator=torch.Generator().manual_seed(0), dm_weight=0.0, dm_per_class=2,
                           features=features)
        runs.append((losses, vtc.state_dict()))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1].values(), runs[1][1].values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="one row per image"):
        train_vtc(vtc, model, data, torch.optim.Adam(vtc.parameters()), target, steps=1, batch_size=16,
                  generator=torch.Generator(), dm_weight=0.0, dm_per_class=2, features=torch.zeros(3, 8))


def test_model_version_follows_every_write_to_the_model():
    """It changes with an optimizer step, BatchNorm's running statistics and a loaded state, and
    not with an eval-mode forward or a change of mode."""
    from fedvtc.training import model_version
    from fedvtc.zoo import create_model

    model = create_model("resnet8", num_classes=3, feature_dim=8, in_channels=1, image_size=28)
    x = torch.randn(4, 1, 28, 28)
    before = model_version(model)
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    assert model_version(model) == before
    model(x)  # BatchNorm's running statistics move
    after_forward = model_version(model)
    assert after_forward != before
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    optimizer.step()
    after_step = model_version(model)
    assert after_step != after_forward
    model.load_state_dict(model.state_dict())
    assert model_version(model) != after_step
