"""FedVTC: share per-class feature Gaussians, train a VTC generator on them, fine-tune on its images.

Client (``FedVTCClient``), per round, given the pooled statistics of the previous round:
local training with the KL alignment -> VTC training (classifier frozen) -> synthesis from the pooled
class Gaussians -> fine-tuning -> statistics of the fine-tuned extractor, uploaded.
Server (``FedVTCStrategy``): pools the statistics exactly (and FedAvg's the VTC when it is shared).
See METHOD.md §2-4 and ``conf/algorithm/fedvtc.yaml`` for every option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fedvtc.augment import random_affine
from fedvtc.averaging import weighted_average
from fedvtc.client import HeteroClient, LazyOptimizer
from fedvtc.settings import ConfigError, RunSettings
from fedvtc.data import ImageSet, class_mean_images, sample_class_images
from fedvtc.federated_data import training_pool
from fedvtc.payload import Payload, PayloadError, decode
from fedvtc.plots import save_class_grid
from fedvtc.reference import load_reference, synthetic_accuracy
from fedvtc.privacy.dp import epsilon_spent, private_class_statistics, resolve_noise_multiplier
from fedvtc.seeding import AUGMENT, DP_NOISE, FINETUNE, INIT, SYNTHESIS, VTC_TRAIN, derive_seed, torch_generator
from fedvtc.stats import ClassStats, class_statistics, pool_statistics
from fedvtc.strategy import HeteroStrategy, Upload
from fedvtc.training import (
    Alignment,
    GlobalGaussians,
    extract_features,
    finetune,
    model_version,
    DM_SPACES,
    NORM_STATS,
    VTC_INPUTS,
    synthesize,
    train_vtc,
)
from fedvtc.vtc import VTC, AdaptedVTC, load_shared_arrays, shared_arrays, shared_shapes

SCHEDULES = ("every_round", "final", "off")
SYNTHESIS_CLASSES = ("all", "missing")
# Where the fine-tuning images of the pooled classes come from: the VTC (the method), or one of two
# oracle controls that read the other clients' training images, which no federation can: each class's
# mean image (the best a one-template-per-class decoder could draw) or real images drawn from the
# pool (a perfect generator). They bound what a better decoder could add (RESULTS.md §1).
SYNTHESIS_SOURCES = ("vtc", "oracle_mean", "oracle_images")
FINETUNE_DATA = ("mix", "synthetic", "real")


@dataclass(frozen=True)
class VTCSettings:
    width: int = 16
    steps: int = 60
    # When set, the budget scales with the data instead: this many passes over the local training
    # set (in VTC batches) per round, and ``steps`` is ignored.
    epochs: float | None = 1.0
    lr: float = 1e-3
    batch_size: int = 32
    dm_weight: float = 0.0
    dm_per_class: int = 4
    dm_space: str = "features"
    grad_clip: float = 10.0
    # First round in which VTC training, synthesis and fine-tuning run (2 = as soon as pooled
    # statistics exist); later rounds let the feature spaces align first.
    start_round: int = 2
    # The VAE reading: the reconstruction loss also trains the extractor as the encoder.
    train_encoder: bool = False
    encoder_weight: float = 1.0
    # Scale of the noise added to a feature before the VTC decodes it in training (1 = sigma_y,
    # METHOD.md §2): at 1 the noise is as large as the class's whole spread, so the decoder can keep
    # little of an image beyond its class (RESULTS.md §1, "why").
    train_noise: float = 1.0
    # What the VTC decodes in training (VTC_INPUTS): "features", the image's g(x) (METHOD.md §2), or
    # "class_mean", the pooled mean c^y of its class, so that every client trains the averaged decoder
    # on the same inputs (the pooled Gaussians that synthesis draws from), whatever its extractor.
    train_input: str = "features"
    # Which decoder synthesizes: "local" (this client's, after its VTC steps of the round) or
    # "global" (with a shared VTC: the server's average as received, before this client's steps;
    # a private VTC has no average and synthesizes with its own).
    synthesize_from: str = "global"
    # A private linear map (identity at the start) in front of the shared decoder, trained with it
    # and never sent: each client maps its own feature space into the one input space the averaged
    # decoder reads, so the average need not agree only on what all spaces share (the class means).
    adapter: bool = False
    # Size k of a style code the VTC also decodes (0 = none, METHOD.md): a shared image encoder
    # gives it in training, the prior N(0, I) at synthesis, so that what varies within a class is
    # learned in pixel space, which every client shares (RESULTS.md §1, "style code").
    style_dim: int = 0
    # Weight of the style code's KL (1 = the ELBO of a unit-variance Gaussian pixel likelihood).
    style_beta: float = 1.0
    # Does the style encoder also read the image's class, q(u | x, y) as a conditional VAE's does?
    style_reads_class: bool = False

    def steps_for(self, num_samples: int) -> int:
        """VTC steps this round for a local training set of ``num_samples`` images."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * math.ceil(num_samples / self.batch_size)))


@dataclass(frozen=True)
class SynthesisSettings:
    per_class: int = 50
    # Scale of each latent's deviation from its class mean (1 = the pooled Gaussian; smaller =
    # less diverse images of one class).
    noise_scale: float = 1.0
    # Which global classes get synthetic images: "all" (METHOD.md §2) or "missing", those with no
    # image in this client's training set, so that the classes it holds are fine-tuned on its own
    # sharp images alone. "all" stays: with "missing" the client learns "synthetic = a class I
    # lack" and loses on every seed (RESULTS.md §1).
    classes: str = "all"
    # "vtc" (the method) or an oracle control: "oracle_mean" | "oracle_images" (SYNTHESIS_SOURCES).
    source: str = "vtc"
    # Strength of a random rotation, scaling and shift of each synthetic image (0 = none, METHOD.md;
    # 1 = up to 20 degrees, 15 % and 10 % of the side: ``fedvtc.augment``).
    augment: float = 0.0


@dataclass(frozen=True)
class FinetuneSettings:
    data: str = "mix"
    scope: str = "full"
    epochs: int = 1
    # Do the fine-tuning batches (synthetic images among them) move BatchNorm's running
    # statistics ("update") or stay with those of local training ("frozen")?
    norm_stats: str = "frozen"


@dataclass(frozen=True)
class FedVTCSettings:
    """``conf/algorithm/fedvtc.yaml``; each field is documented there."""

    kl_weight: float = 1.0
    kl_reduction: str = "sum"
    variance_floor: float = 1e-3
    schedule: str = "every_round"
    shared_vtc: bool = True
    covariance: str = "diag"
    shrinkage: float = 0.1
    vtc: VTCSettings = field(default_factory=VTCSettings)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    def check(self, run: RunSettings) -> None:
        """Raise ``ConfigError`` for values that cannot work."""
        choices = {
            "schedule": (self.schedule, SCHEDULES),
            "covariance": (self.covariance, ("diag", "full")),
            "kl_reduction": (self.kl_reduction, ("sum", "mean")),
            "finetune.data": (self.finetune.data, FINETUNE_DATA),
            "synthesis.classes": (self.synthesis.classes, SYNTHESIS_CLASSES),
            "synthesis.source": (self.synthesis.source, SYNTHESIS_SOURCES),
            "finetune.scope": (self.finetune.scope, ("full", "head")),
            "finetune.norm_stats": (self.finetune.norm_stats, NORM_STATS),
            "vtc.dm_space": (self.vtc.dm_space, DM_SPACES),
            "vtc.train_input": (self.vtc.train_input, VTC_INPUTS),
            "vtc.synthesize_from": (self.vtc.synthesize_from, ("local", "global")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"algorithm.{key} must be one of {list(allowed)}, got '{value}'")
        for holds, message in FEDVTC_CHECKS:
            if not holds(self):
                raise ConfigError(message(self))


# FedVTC's checks beyond the choices above, in order: (holds for good settings, the error's message).
_FedVTCCheck = tuple[Callable[[FedVTCSettings], bool], Callable[[FedVTCSettings], str]]
FEDVTC_CHECKS: list[_FedVTCCheck] = [
    (lambda a: a.kl_weight >= 0, lambda a: f"algorithm.kl_weight must be >= 0, got {a.kl_weight}"),
    (lambda a: a.vtc.dm_weight >= 0, lambda a: f"algorithm.vtc.dm_weight must be >= 0, got {a.vtc.dm_weight}"),
    (lambda a: a.variance_floor > 0, lambda a: f"algorithm.variance_floor must be > 0, got {a.variance_floor}"),
    (lambda a: a.vtc.dm_per_class >= 2,
     lambda a: f"algorithm.vtc.dm_per_class must be >= 2 (a std needs 2 samples), got {a.vtc.dm_per_class}"),
    (lambda a: a.synthesis.per_class >= 1 and a.vtc.steps >= 0 and a.finetune.epochs >= 0,
     lambda a: "algorithm.synthesis.per_class must be >= 1; vtc.steps, finetune.epochs >= 0"),
    (lambda a: 0 <= a.shrinkage <= 1, lambda a: f"algorithm.shrinkage must be in [0, 1], got {a.shrinkage}"),
    (lambda a: a.vtc.epochs is None or a.vtc.epochs > 0,
     lambda a: f"algorithm.vtc.epochs must be null (use vtc.steps) or > 0, got {a.vtc.epochs}"),
    (lambda a: a.vtc.start_round >= 2,
     lambda a: f"algorithm.vtc.start_round must be >= 2 (round 1 has no pooled statistics), got {a.vtc.start_round}"),
    (lambda a: not (a.vtc.adapter and not a.shared_vtc),
     lambda a: "algorithm.vtc.adapter=true maps a client's features into a shared decoder's input; "
               "with algorithm.shared_vtc=false the private VTC reads them directly: set one of them"),
    (lambda a: a.vtc.style_dim >= 0 and a.vtc.style_beta >= 0,
     lambda a: f"algorithm.vtc.style_dim and algorithm.vtc.style_beta must be >= 0, got "
               f"{a.vtc.style_dim} and {a.vtc.style_beta}"),
    # The control and the oracles train no VTC: a shared one would be averaged and sent untrained.
    (lambda a: not (a.shared_vtc and (a.finetune.data == "real" or a.synthesis.source != "vtc")),
     lambda a: f"algorithm.finetune.data={a.finetune.data} with algorithm.synthesis.source="
               f"{a.synthesis.source} trains no VTC, so algorithm.shared_vtc=true would average and send "
               "an untrained one; set algorithm.shared_vtc=false, as algorithm=fedvtc_real_finetune and "
               "fedvtc_oracle_* do"),
    (lambda a: not (a.vtc.train_encoder and a.vtc.train_input == "class_mean"),
     lambda a: "algorithm.vtc.train_encoder=true trains the extractor through the decoder, and "
               "algorithm.vtc.train_input=class_mean decodes no features: set one of them"),
    (lambda a: not (a.vtc.adapter and a.vtc.style_dim),
     lambda a: "algorithm.vtc.adapter=true and algorithm.vtc.style_dim > 0 are two readings that do not "
               "combine (the adapter maps the features alone); set one of them"),
    (lambda a: not (a.vtc.synthesize_from == "global" and a.shared_vtc and a.schedule == "final"),
     lambda a: "algorithm.vtc.synthesize_from=global does not work with schedule=final (the "
               "average it synthesizes with is trained round by round); set algorithm.vtc.synthesize_from=local"),
    (lambda a: min(a.vtc.encoder_weight, a.vtc.train_noise, a.synthesis.noise_scale, a.synthesis.augment) >= 0,
     lambda a: "algorithm.vtc.encoder_weight, algorithm.vtc.train_noise, algorithm.synthesis.noise_scale "
               "and algorithm.synthesis.augment must be >= 0"),
]


def build_vtc(run: RunSettings) -> VTC:
    """The VTC for this run's data and feature size."""
    d = run.dataset
    v = run.algorithm.vtc
    return VTC(run.feature_dim, d.image_size, d.channels, d.mean, d.std, width=v.width, style_dim=v.style_dim,
               style_classes=d.num_classes if v.style_reads_class else 0)


def build_adapter(run: RunSettings) -> torch.nn.Linear:
    """``vtc.adapter``'s private map of the client's features, the identity to start with."""
    p = run.feature_dim
    adapter = torch.nn.Linear(p, p)
    with torch.no_grad():
        adapter.weight.copy_(torch.eye(p))
        adapter.bias.zero_()
    return adapter


def decoder_of(vtc: VTC, adapter: torch.nn.Module | None) -> VTC | AdaptedVTC:
    """What turns a latent into an image: the VTC, behind the client's adapter when it has one."""
    return vtc if adapter is None else AdaptedVTC(adapter, vtc)


class FedVTCClient(HeteroClient):
    """A FedVTC client: its own model and (unless shared) its own VTC."""

    def setup(self) -> None:
        a: FedVTCSettings = self.s.algorithm
        # A shared VTC starts from the same weights on every client; a private one from its own.
        init_key = (self.s.seed, INIT, 1) if a.shared_vtc else (self.s.seed, self.cid, INIT, 1)
        torch.manual_seed(derive_seed(*init_key))
        self.vtc = build_vtc(self.s).to(self.device)
        self.adapter = build_adapter(self.s).to(self.device) if a.vtc.adapter else None
        # What synthesizes and trains; only self.vtc is sent (the adapter stays on the client).
        self.decoder = decoder_of(self.vtc, self.adapter)
        self._vtc_optimizer = LazyOptimizer(lambda: torch.optim.Adam(self.decoder.parameters(), lr=a.vtc.lr))
        self.local_stats: ClassStats | None = None
        # Rounds in which this client released differentially private statistics (dp.enabled).
        self.dp_releases = 0
        # The pooled statistics last received: what the VTC was last trained and sampled on, kept
        # so that fedvtc.privacy.leakage can synthesize from it after the run.
        self.global_stats: ClassStats | None = None
        # g(x) of the training set and the model version they were computed on (_training_features).
        self._features: tuple[tuple[int, ...], torch.Tensor] | None = None

    def extra_state(self) -> dict[str, Any]:
        return {
            "vtc": self.vtc.state_dict(),
            "vtc_optimizer": self._vtc_optimizer.state_dict(),
            "adapter": self.adapter.state_dict() if self.adapter is not None else None,
            "local_stats": self.local_stats,
            "dp_releases": self.dp_releases,
            "global_stats": self.global_stats,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.vtc.load_state_dict(state["vtc"])
        self._vtc_optimizer.load_state_dict(state["vtc_optimizer"])
        if self.adapter is not None:
            self.adapter.load_state_dict(state["adapter"])
        self.local_stats = state["local_stats"]
        self.dp_releases = int(state.get("dp_releases", 0))  # absent from states saved before DP
        self.global_stats = state.get("global_stats")  # absent from states saved before it was kept

    def decode_download(self, parameters: list) -> Payload:
        # The server sends the pooled VTC once one exists (from round 2 when shared), else none.
        return decode(
            parameters, num_classes=self.s.dataset.num_classes, feature_dim=self.s.feature_dim,
            extra_shapes=shared_shapes(self.vtc) if self.s.algorithm.shared_vtc else None,
            extra_optional=True,
        )

    def train_round(self, received: Payload, server_round: int, num_rounds: int) -> Payload:
        a: FedVTCSettings = self.s.algorithm
        C = self.s.dataset.num_classes
        target = None
        if received.stats is not None:
            self.global_stats = received.stats
            target = GlobalGaussians.from_stats(
                received.stats, C, variance_floor=a.variance_floor, device=self.device
            )
        if a.shared_vtc and received.extra:
            load_shared_arrays(self.vtc, received.extra)

        alignment = None
        if target is not None and a.kl_weight > 0 and self.local_stats is not None:
            _, _, local_vars = self.local_stats.dense(C)
            local_vars = torch.as_tensor(local_vars, dtype=torch.float32, device=self.device)
            alignment = Alignment(target, local_vars.clamp_min(a.variance_floor), a.kl_weight, a.kl_reduction)
        self.local_training(server_round, alignment=alignment)

        generate = target is not None and (
            (a.schedule == "every_round" and server_round >= a.vtc.start_round)
            or (a.schedule == "final" and server_round == num_rounds)
        )
        if generate:
            self._generate_and_finetune(target, server_round, num_rounds)

        with self.timer("statistics"):
            if self.s.dp.enabled:
                # The noisy statistics are also what this client aligns to in next round's KL term:
                # post-processing of what it released, so that costs no further privacy.
                self.local_stats = self._private_statistics(server_round, num_rounds)
            else:
                self.local_stats = class_statistics(
                    self._training_features(), self.train_data.y, full=a.covariance == "full"
                )
        self._features = None  # not held past the round: model_version alone keeps them correct
        return Payload(stats=self.local_stats, extra=shared_arrays(self.vtc) if a.shared_vtc else [])

    def _private_statistics(self, server_round: int, num_rounds: int) -> ClassStats:
        """Clipped, noised class statistics (``fedvtc.privacy.dp``); reports the epsilon spent so far.

        Args:
            server_round: this round (seeds the noise).
            num_rounds: rounds in the run, the releases a ``dp.target_epsilon`` budget must cover.
        """
        dp = self.s.dp
        z = resolve_noise_multiplier(dp.noise_multiplier, dp.target_epsilon, num_rounds, dp.delta)
        stats = private_class_statistics(
            self._training_features(), self.train_data.y,
            num_classes=self.s.dataset.num_classes, clip=dp.clip, noise_multiplier=z,
            generator=torch_generator(self.s.seed, self.cid, server_round, DP_NOISE),
            full=self.s.algorithm.covariance == "full", count_threshold=dp.count_threshold,
            variance_floor=self.s.algorithm.variance_floor,
        )
        # Counted per release, not per round: a client not sampled in a round spends nothing.
        self.dp_releases += 1
        self.round_metrics.update(
            dp_epsilon=epsilon_spent(z, self.dp_releases, dp.delta), dp_delta=dp.delta, dp_noise_multiplier=z,
        )
        return stats

    def fit(self, parameters: list, config: dict[str, Any]):
        arrays, num_examples, metrics = super().fit(parameters, config)
        if self.s.dp.enabled and self.local_stats is not None:
            # HeteroClient reports len(train_data), an exact count of private records that add/remove
            # DP must hide; send the total of the released noisy counts instead (post-processing).
            num_examples = max(1, int(round(float(self.local_stats.counts.sum()))))
        return arrays, num_examples, metrics

    def _generate_and_finetune(self, target: GlobalGaussians, server_round: int, num_rounds: int) -> None:
        """VTC training, synthesis and fine-tuning, in the order the reading asks for.

        ``vtc.synthesize_from=local``: train this client's VTC, then synthesize with it.
        ``global`` (shared VTC): synthesize with the decoder as the server averaged it, before this
        client's VTC steps (which then only make its contribution to the next average, on the
        fine-tuned extractor's features); the first generation round has no trained average yet, so
        it only trains.
        """
        a: FedVTCSettings = self.s.algorithm
        if a.finetune.data == "real":  # the control: the same fine-tuning, no generator to train
            self._synthesize_and_finetune(target, server_round, num_rounds)
            return
        # The oracles draw without a decoder, in the rounds the VTC's images would be used.
        train_decoder = a.synthesis.source == "vtc"
        if a.vtc.synthesize_from == "local" or not a.shared_vtc:  # a private VTC has no average
            if train_decoder:
                self._train_vtc(target, server_round)
            self._synthesize_and_finetune(target, server_round, num_rounds)
            return
        if server_round > a.vtc.start_round:
            self._synthesize_and_finetune(target, server_round, num_rounds)
        if train_decoder:
            self._train_vtc(target, server_round)

    def _training_features(self) -> torch.Tensor:
        """g(x) of the training set for the model as it is now, computed once per model version: the
        VTC's steps and the statistics that follow them read the same features when nothing trained
        the model in between (``synthesize_from=global``)."""
        version = model_version(self.model)
        if self._features is None or self._features[0] != version:
            self._features = (version, extract_features(self.model, self.train_data.x))
        return self._features[1]

    def _train_vtc(self, target: GlobalGaussians, server_round: int) -> None:
        a: FedVTCSettings = self.s.algorithm
        train = self._on_device(self.train_data)
        with self.timer("vtc_train"):
            # The extractor is frozen here unless it trains as the encoder; class_mean reads none.
            reads_features = a.vtc.train_input == "features" and not a.vtc.train_encoder
            losses = train_vtc(
                self.decoder, self.model, train, self._vtc_optimizer.get(), target,
                steps=a.vtc.steps_for(len(train)), batch_size=a.vtc.batch_size,
                generator=torch_generator(self.s.seed, self.cid, server_round, VTC_TRAIN),
                dm_weight=a.vtc.dm_weight, dm_per_class=a.vtc.dm_per_class, grad_clip=a.vtc.grad_clip,
                dm_space=a.vtc.dm_space, encoder_optimizer=self.optimizer if a.vtc.train_encoder else None,
                encoder_weight=a.vtc.encoder_weight, train_noise=a.vtc.train_noise, style_beta=a.vtc.style_beta,
                train_input=a.vtc.train_input, features=self._training_features() if reads_features else None,
            )
        self.round_metrics.update(losses)

    def _synthesize_and_finetune(self, target: GlobalGaussians, server_round: int, num_rounds: int) -> None:
        a: FedVTCSettings = self.s.algorithm
        key = (self.s.seed, self.cid, server_round)
        train = self._on_device(self.train_data)
        synthetic = None
        classes = self._synthesis_classes(target)
        if a.finetune.data != "real" and len(classes):
            with self.timer("synthesis"):
                synthetic = self._draw_synthetic(target, classes, torch_generator(*key, SYNTHESIS))
                if a.synthesis.augment:
                    posed = random_affine(synthetic.x, strength=a.synthesis.augment,
                                          generator=torch_generator(*key, AUGMENT))
                    synthetic = ImageSet(posed, synthetic.y)
            self._score_synthetic(synthetic)
            if self._wants_grid(server_round, num_rounds):
                save_class_grid(
                    self.vtc.to_pixels(synthetic.x.to(self.device)).cpu(), synthetic.y,
                    Path(self.s.output_dir) / f"synthetic_client{self.cid}.png",
                    per_class=self.s.output.synthetic_grid_per_class,
                )
        if synthetic is None and a.finetune.data == "synthetic":
            return  # synthesis.classes=missing on a client that holds every class: nothing to learn
        data = {
            "mix": lambda: train if synthetic is None else _concat(train, synthetic),
            "synthetic": lambda: synthetic,
            "real": lambda: train,
        }[a.finetune.data]()
        with self.timer("finetune"):
            finetune(
                self.model, data, self.optimizer, epochs=a.finetune.epochs,
                batch_size=self.s.train.batch_size, generator=torch_generator(*key, FINETUNE),
                scope=a.finetune.scope, grad_clip=self.s.train.grad_clip, norm_stats=a.finetune.norm_stats,
            )

    def _draw_synthetic(self, target: GlobalGaussians, classes: torch.Tensor, generator: torch.Generator) -> ImageSet:
        """The round's labelled images of ``classes``, from the VTC or the oracle of ``synthesis.source``."""
        syn = self.s.algorithm.synthesis
        if syn.source == "vtc":
            return synthesize(self.decoder, target, per_class=syn.per_class, classes=classes,
                              generator=generator, noise_scale=syn.noise_scale)
        pool = training_pool(self.s)
        if syn.source == "oracle_mean":
            return class_mean_images(pool, classes, per_class=syn.per_class)
        return sample_class_images(pool, classes, per_class=syn.per_class, generator=generator)

    def _synthesis_classes(self, target: GlobalGaussians) -> torch.Tensor:
        """The global classes to synthesize this round (``synthesis.classes``)."""
        classes = target.classes
        if self.s.algorithm.synthesis.classes == "missing":
            held = torch.as_tensor(np.unique(self.train_data.y.numpy()), device=classes.device)
            classes = classes[~torch.isin(classes, held)]
        return classes

    def _score_synthetic(self, synthetic: ImageSet) -> None:
        """Let the run's reference classifier judge the synthetic images (when the run has one)."""
        reference = load_reference(self.s.output_dir) if self.s.eval.reference_model else None
        if reference is not None:
            local_classes = np.unique(self.train_data.y.numpy())
            self.round_metrics.update(synthetic_accuracy(reference, synthetic.x.cpu(), synthetic.y, local_classes))

    def _wants_grid(self, server_round: int, num_rounds: int) -> bool:
        return server_round == num_rounds and self.cid in self.s.output.synthetic_grid_clients


def _concat(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(torch.cat([a.x, b.x.to(a.x.device)]), torch.cat([a.y, b.y.to(a.y.device)]))


class FedVTCStrategy(HeteroStrategy):
    """Pools the clients' class statistics exactly; FedAvg's the VTC when it is shared.

    Args:
        covariance: ``"diag"`` or ``"full"``; uploads of the other kind are rejected.
        vtc_shapes: shapes of the shared VTC's arrays, or None when VTCs are private.
        **kwargs: see ``HeteroStrategy``.
    """

    def __init__(self, *, covariance: str = "diag", vtc_shapes: Sequence[tuple[int, ...]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.covariance = covariance
        self.vtc_shapes = list(vtc_shapes) if vtc_shapes is not None else None

    @classmethod
    def from_settings(cls, run: RunSettings, **kwargs: Any) -> FedVTCStrategy:
        a: FedVTCSettings = run.algorithm
        shapes = shared_shapes(build_vtc(run)) if a.shared_vtc else None
        return cls(covariance=a.covariance, vtc_shapes=shapes, **kwargs)

    def extra_upload_shapes(self) -> Sequence[tuple[int, ...]] | None:
        return self.vtc_shapes

    def check_upload(self, payload: Payload) -> None:
        if payload.stats is None:
            raise PayloadError("a FedVTC upload must carry class statistics")
        if payload.stats.means_only or payload.stats.full != (self.covariance == "full"):
            raise PayloadError(f"statistics must be {self.covariance} covariance")

    def aggregate(self, server_round: int, uploads: list[Upload]) -> Payload:
        stats = pool_statistics([u.payload.stats for u in uploads])
        extra: list = []
        if self.vtc_shapes is not None:
            extra = weighted_average([u.payload.extra for u in uploads], [u.num_examples for u in uploads])
        return Payload(stats=stats, extra=extra)
