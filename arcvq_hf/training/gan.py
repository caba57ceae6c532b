"""The VQGAN recipe: LPIPS-VGG perceptual loss (as taming's), PatchGAN discriminator, adaptive GAN weight, and
`ArcVQGANTrainer`, which trains the discriminator beside the model.

The perceptual loss is `arcvq_hf.evaluation.perceptual`'s LPIPS v0.1 with the VGG16 backbone, the same network and
weights as the LPIPS metric (installed once with `python -m arcvq_hf.evaluation.perceptual fetch`; nothing downloads
at run time).

`GANSettings` is the recipe's one declaration of its knobs: `HfArgumentParser` parses it directly
(`examples/train_arcvq.py` lists it beside its own argument classes), and `ArcVQGANTrainer` takes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.modeling_utils import unwrap_model
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint

from arcvq_hf.evaluation.perceptual import LPIPS, PerceptualWeightsMissingError

from .trainer import ArcVQTrainer

# The perceptual loss of taming's VQGAN (LPIPS v0.1 with the VGG16 backbone) and its weight there.
PERCEPTUAL_NET = "vgg"
TAMING_PERCEPTUAL_WEIGHT = 1.0


def load_perceptual_loss(device: torch.device | str | None = None) -> LPIPS:
    """A fresh LPIPS-VGG module for the generator loss (its own copy: the shared `load_lpips` modules must not be
    moved or modified by a trainer).

    Raises:
        PerceptualWeightsMissingError: the weights are not installed; the message names the fetch command and the
            way to train without the perceptual loss.
    """
    try:
        return LPIPS.from_pretrained(PERCEPTUAL_NET, device=device)
    except PerceptualWeightsMissingError as error:
        raise PerceptualWeightsMissingError(
            f"{error}\nThe VQGAN recipe's perceptual loss is LPIPS-VGG (perceptual_weight > 0). To train without it, "
            "pass perceptual_weight=0 (--perceptual_weight 0)."
        ) from error


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al.): (B, C, H, W) -> (B, 1, h, w) patch logits.

    Conv4x4 s2 + LeakyReLU, then `num_layers - 1` Conv4x4 s2 + BatchNorm + LeakyReLU (width doubling up to 8x), one
    Conv4x4 s1 + BatchNorm + LeakyReLU and a Conv4x4 s1 to one channel. Needs H, W >= 2^(num_layers + 2) or so.
    """

    def __init__(self, num_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(num_channels, base_channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = 1
        for level in range(1, num_layers + 1):
            previous, width = width, min(2**level, 8)
            stride = 2 if level < num_layers else 1
            layers += [
                nn.Conv2d(base_channels * previous, base_channels * width, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(base_channels * width),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(base_channels * width, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DCGAN init, as taming's PatchGAN: conv N(0, 0.02), batch-norm scale N(1, 0.02), shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.main(pixel_values)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def decoder_last_layer(model: nn.Module) -> torch.Tensor:
    """Weight of the decoder's output convolution, where the adaptive GAN weight compares gradient norms."""
    decoder = unwrap_model(model).decoder
    layer = getattr(decoder, "conv_out", None) or getattr(decoder, "conv_trans_2", None)
    if layer is None:
        raise ValueError("Cannot find the decoder's output convolution (conv_out / conv_trans_2).")
    return layer.weight


def adaptive_gan_weight(
    reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """||grad_last reconstruction_loss|| / (||grad_last gan_loss|| + 1e-4), clamped to [0, max_weight], detached."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


@dataclass
class GANSettings:
    """Knobs of the VQGAN recipe (taming's defaults where it has one)."""

    disc_start: int = field(default=1000, metadata={"help": "Optimizer step from which the GAN loss is on."})
    disc_weight: float = field(default=0.8, metadata={"help": "Weight of the adaptive GAN term."})
    disc_learning_rate: float | None = field(default=None, metadata={"help": "Default: the Trainer's rate."})
    disc_num_layers: int = field(default=3, metadata={"help": "PatchGAN depth."})
    disc_base_channels: int = field(default=64, metadata={"help": "PatchGAN base width."})
    perceptual_weight: float = field(
        default=TAMING_PERCEPTUAL_WEIGHT,
        metadata={
            "help": "Weight of the LPIPS-VGG perceptual loss (taming's 1.0); its weights come from "
            "`python -m arcvq_hf.evaluation.perceptual fetch`. 0 trains without it."
        },
    )


class DiscriminatorCheckpointCallback(TrainerCallback):
    """Writes the GAN trainer's discriminator weights and optimizer state into each Trainer checkpoint folder
    (`on_save` runs right after Trainer has written `checkpoint-<global_step>`)."""

    def __init__(self, trainer: ArcVQGANTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self.trainer.save_discriminator_state(folder)


class ArcVQGANTrainer(ArcVQTrainer):
    """VQGAN recipe on top of `ArcVQTrainer`: the model's loss (L1 + VQ + gamma_t * arc for the vqgan variant)
    + perceptual_weight * mean LPIPS-VGG(reconstruction, image) (on by default; raises
    PerceptualWeightsMissingError naming the fetch command when its weights are absent and perceptual_weight > 0)
    + adaptive_weight * disc_weight * (-mean D(reconstruction)) from `disc_start` on. As in taming, the adaptive
    weight balances the GAN term against L1 + perceptual. The PatchGAN discriminator has its own Adam optimizer (the
    Trainer's betas, `disc_learning_rate` or the Trainer's rate) and takes one hinge-loss step after each micro-batch
    from `disc_start` on; in distributed runs its gradients are averaged over processes. Its weights and optimizer
    state are saved in every Trainer checkpoint (`DiscriminatorCheckpointCallback`) and restored by
    `train(resume_from_checkpoint=...)`.
    """

    DISCRIMINATOR_FILE = "discriminator.safetensors"
    DISCRIMINATOR_OPTIMIZER_FILE = "discriminator_optimizer.pt"

    def __init__(self, *args: Any, gan_settings: GANSettings | None = None, **kwargs: Any) -> None:
        gan_settings = gan_settings or GANSettings()
        # Loaded before Trainer's constructor (which creates output_dir): missing weights stop the run at once.
        perceptual_loss = load_perceptual_loss() if gan_settings.perceptual_weight > 0 else None
        super().__init__(*args, **kwargs)
        self.gan_settings = gan_settings
        config = unwrap_model(self.model).config
        self.discriminator = PatchDiscriminator(
            config.num_channels, self.gan_settings.disc_base_channels, self.gan_settings.disc_num_layers
        ).to(self.args.device)
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=self.gan_settings.disc_learning_rate or self.args.learning_rate,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
        )
        self.perceptual_loss = perceptual_loss.to(self.args.device) if perceptual_loss is not None else None
        self._gan_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.add_callback(DiscriminatorCheckpointCallback(self))

    @property
    def gan_active(self) -> bool:
        return self.state.global_step >= self.gan_settings.disc_start and self.gan_settings.disc_weight > 0

    # ----- losses and the discriminator step -----------------------------------------------------------------
    def generator_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        pixel_values = inputs["pixel_values"]
        reconstruction = outputs.reconstruction
        loss = outputs.loss
        pixel_loss = outputs.reconstruction_loss
        if self.perceptual_loss is not None:
            # Model space is LPIPS's [-1, 1] (the processor's default mapping); the reconstruction is not clamped,
            # so its gradient survives outside that range.
            perceptual = self.perceptual_loss(reconstruction, pixel_values).mean()
            self.train_means.add("perceptual_loss", perceptual.detach())
            pixel_loss = pixel_loss + self.gan_settings.perceptual_weight * perceptual
            loss = loss + self.gan_settings.perceptual_weight * perceptual
        self._gan_batch = None
        if self.gan_active:
            self.discriminator.requires_grad_(False)
            gan_loss = -self.discriminator(reconstruction).mean()
            self.discriminator.requires_grad_(True)
            weight = adaptive_gan_weight(pixel_loss, gan_loss, decoder_last_layer(model))
            loss = loss + self.gan_settings.disc_weight * weight * gan_loss
            self.train_means.add("gan_generator_loss", gan_loss.detach())
            self.train_means.add("gan_adaptive_weight", weight)
            self._gan_batch = (pixel_values.detach(), reconstruction.detach())
        return loss

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._gan_batch is not None:
            real, fake = self._gan_batch
            self._gan_batch = None
            self.discriminator.train()
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            disc_loss = hinge_discriminator_loss(self.discriminator(real), self.discriminator(fake))
            disc_loss.backward()
            if self.accelerator.num_processes > 1:
                for parameter in self.discriminator.parameters():
                    if parameter.grad is not None:
                        parameter.grad.copy_(self.accelerator.reduce(parameter.grad, reduction="mean"))
            self.discriminator_optimizer.step()
            self.train_means.add("discriminator_loss", disc_loss.detach())
        return loss

    # ----- checkpoints ---------------------------------------------------------------------------------------
    def save_discriminator_state(self, folder: str) -> None:
        """Write the discriminator's weights (safetensors) and its optimizer state into `folder`."""
        weights = {key: value.contiguous() for key, value in self.discriminator.state_dict().items()}
        save_file(weights, os.path.join(folder, self.DISCRIMINATOR_FILE))
        torch.save(self.discriminator_optimizer.state_dict(), os.path.join(folder, self.DISCRIMINATOR_OPTIMIZER_FILE))

    def load_discriminator_state(self, folder: str) -> None:
        """Restore what `save_discriminator_state` wrote into `folder` (each file only if present)."""
        weights = os.path.join(folder, self.DISCRIMINATOR_FILE)
        if os.path.exists(weights):
            self.discriminator.load_state_dict(load_file(weights, device=str(self.args.device)))
        optimizer_state = os.path.join(folder, self.DISCRIMINATOR_OPTIMIZER_FILE)
        if os.path.exists(optimizer_state):
            self.discriminator_optimizer.load_state_dict(
                torch.load(optimizer_state, map_location=self.args.device, weights_only=True)
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """`Trainer.train`, restoring the discriminator too when resuming (`True`: the last checkpoint in
        `output_dir`, as Trainer resolves it)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in output_dir ({self.args.output_dir}) to resume from.")
        if resume_from_checkpoint:
            self.load_discriminator_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


__all__ = [
    "PERCEPTUAL_NET",
    "TAMING_PERCEPTUAL_WEIGHT",
    "ArcVQGANTrainer",
    "DiscriminatorCheckpointCallback",
    "GANSettings",
    "PatchDiscriminator",
    "adaptive_gan_weight",
    "decoder_last_layer",
    "hinge_discriminator_loss",
    "load_perceptual_loss",
]
