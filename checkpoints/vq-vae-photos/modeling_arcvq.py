"""ArcVQ-VAE: a VQ-VAE image tokenizer whose codebook lives under the spherical angular-margin prior."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbones_arcvq import VQVAEDecoder, VQVAEEncoder, build_vqgan_decoder, build_vqgan_encoder
from .configuration_arcvq import ArcVQConfig
from .quantization import SphericalAngularMarginQuantizer, init_codebook_

# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class ArcVQPreTrainedModel(PreTrainedModel):
    config_class = ArcVQConfig
    base_model_prefix = "arcvq"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True

    # The step buffer is the only entry a checkpoint may lack: without it the schedules start at step 0.
    _keys_allowed_missing = ("quantizer.step",)

    @classmethod
    def _finalize_model_loading(cls, model: nn.Module, load_config: Any, loading_info: Any) -> Any:
        """Refuse, before transformers re-initialises anything, a checkpoint that does not fill the model.

        transformers would load a file that lacks a tensor (even the codebook) with random values and a log line, and
        reports a shape mismatch with a pointer to its log. A tokenizer with random weights gives meaningless
        tokens, so both are errors here that name the tensors, their shapes and the config values behind them.
        """
        missing = sorted(set(loading_info.missing_keys) - set(cls._keys_allowed_missing))
        mismatched = [] if load_config.ignore_mismatched_sizes else sorted(loading_info.mismatched_keys)
        if missing or mismatched:
            source = load_config.pretrained_model_name_or_path
            problems = []
            if missing:
                problems.append(f"it lacks {missing}")
            for key, saved_shape, model_shape in mismatched:
                problems.append(f"{key} is {tuple(saved_shape)} in the file but {tuple(model_shape)} for this config")
            config = model.config
            raise ValueError(
                f"The weights in {source} do not fit the model: {'; '.join(problems)}. The config builds "
                f"codebook_size={config.codebook_size}, codebook_dim={config.codebook_dim}, "
                f"hidden_size={config.hidden_size}, num_channels={config.num_channels} (backbone {config.backbone}). "
                "Load without overriding the config, or pass ignore_mismatched_sizes=True to re-initialise "
                "mismatched tensors."
            )
        return super()._finalize_model_loading(model, load_config, loading_info)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, plus the `image-tokenization` pipeline as remote code.

        Where the model files travel (the class is registered for an Auto class, as importing `arcvq_hf` and loading
        with `trust_remote_code=True` both do), config.json also gets the `custom_pipelines` entry, so that
        `pipeline("image-tokenization", model=folder, trust_remote_code=True)` works without the package.
        """
        if self._auto_class is not None:
            # Imported here, not at the top, because only saving needs it (it pulls in transformers' pipelines).
            # transformers copies this file's relative imports into the saved folder (it reads the `from .x import`
            # lines, wherever they are), so this line is also what puts pipeline_arcvq.py next to the weights.
            from .pipeline_arcvq import CUSTOM_PIPELINES

            # vars(): the saved entries as they are (the package reads the attribute through a filtered view).
            saved = vars(self.config).get("custom_pipelines") or {}
            self.config.custom_pipelines = {**saved, **CUSTOM_PIPELINES}
        super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default init for convolutions and linears (the reference trains from it), the codebook
        init, step 0. `transformers.initialization` skips tensors that were loaded from a checkpoint."""
        if isinstance(module, SphericalAngularMarginQuantizer):
            if not getattr(module.embedding.weight, "_is_hf_initialized", False):
                init_codebook_(module.embedding.weight, module.codebook_init)
                module.reset_code_statistics()
            init.zeros_(module.step)
            # Buffers of options a checkpoint may lack (an option switched on for fine-tuning): empty, not garbage.
            for name in ("latent_memory_filled", "steps_since_used"):
                if hasattr(module, name):
                    init.zeros_(getattr(module, name))
        elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0][0].numel()
                if isinstance(module, nn.ConvTranspose2d):
                    fan_in = module.weight.shape[0] * module.weight[0][0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.GroupNorm | nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


@dataclass
class ArcVQEncoderOutput(ModelOutput):
    r"""
    image_tokens (`torch.LongTensor` of shape `(batch_size, height // f, width // f)`):
        Code index of every latent position, f = `config.downsampling_factor`.
    latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, height // f, width // f)`):
        Encoder output after the pre-quantization conv, before quantization.
    quantized_latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, height // f, width // f)`):
        The raw code vectors the decoder consumes (straight-through with respect to `latents`).
    quantization_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Codebook + beta * commitment loss.
    """

    image_tokens: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized_latents: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None


@dataclass
class ArcVQModelOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        reconstruction_loss + quantization_loss + arc_weight * arc_loss. Set whenever `return_loss=True`.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
        Decoded pixels, same normalisation as the input (nominally [-1, 1]).
    image_tokens (`torch.LongTensor` of shape `(batch_size, height // f, width // f)`):
        Code index of every latent position.
    reconstruction_loss (`torch.FloatTensor` of shape `()`):
        MSE / data_variance, or L1, per `config.reconstruction_loss`.
    quantization_loss (`torch.FloatTensor` of shape `()`):
        Codebook + beta * commitment loss.
    arc_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Unweighted arc-margin loss; absent when `use_arc_margin=False`.
    arc_weight (`torch.FloatTensor` of shape `()`):
        gamma_t at the model's current step.
    ball_radius (`torch.FloatTensor` of shape `()`):
        R(t) at the model's current step.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    image_tokens: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None
    arc_loss: torch.FloatTensor | None = None
    arc_weight: torch.FloatTensor | None = None
    ball_radius: torch.FloatTensor | None = None


class ArcVQModel(ArcVQPreTrainedModel):
    """Encoder -> 1x1 quant conv -> SAMP quantizer -> post-quant conv -> decoder.

    The training step that drives the ball radius and the arc weight is `quantizer.step`, a persistent buffer:
    call `set_training_step(step)` before each optimizer step (`arcvq_hf.training.trainer`'s callback does).
    """

    def __init__(self, config: ArcVQConfig) -> None:
        super().__init__(config)
        if config.backbone == "vqvae":
            self.encoder = VQVAEEncoder(config)
            self.decoder = VQVAEDecoder(config)
            # The paper's decoder takes the codes directly.
            self.post_quant_conv = nn.Identity()
        else:
            self.encoder = build_vqgan_encoder(config)
            self.decoder = build_vqgan_decoder(config)
            self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.latent_channels, kernel_size=1)
        self.quant_conv = nn.Conv2d(self.encoder.out_channels, config.codebook_dim, kernel_size=1)
        self.quantizer = SphericalAngularMarginQuantizer.from_config(config)
        self.post_init()

    # ----- schedules -------------------------------------------------------------------------------------------
    def set_training_step(self, step: int) -> None:
        """Set the optimizer step t that drives R(t) and gamma_t (the quantizer's `step` buffer)."""
        if step < 0:
            raise ValueError(f"training step must be >= 0, got {step}.")
        self.quantizer.set_step(int(step))

    @property
    def schedule_step(self) -> int:
        """The step t the schedules are at: the number of optimizer steps this model has been trained."""
        return self.quantizer.current_step

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) raw code vectors."""
        return self.quantizer.codebook

    # ----- input checks ----------------------------------------------------------------------------------------
    # Normalised pixels stay within a few units of 0 for any sane image_mean / image_std; 0..255 data does not.
    _max_abs_pixel_value = 8.0

    def _prepare_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check pixel_values (B, C, H, W) and cast another floating dtype to the model's (float64 / float16
        inputs to a float32 model, say); raises a clear error for anything the model cannot take."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        batch, channels, height, width = pixel_values.shape
        if batch == 0:
            raise ValueError("pixel_values is an empty batch (batch size 0); pass at least one image.")
        if channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but this model expects {self.config.num_channels} "
                f"(config.num_channels); convert the images, e.g. with ArcVQImageProcessor."
            )
        factor = self.config.downsampling_factor
        if height % factor or width % factor or height == 0 or width == 0:
            raise ValueError(
                f"pixel_values height and width must be positive multiples of the downsampling factor {factor}, "
                f"got {height}x{width}; resize, crop or pad first (ArcVQImageProcessor does)."
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be a floating-point tensor of normalised pixels (ArcVQImageProcessor gives "
                f"[-1, 1]), got dtype {pixel_values.dtype}; pass the images through the processor."
            )
        # One reduction, one host read: NaN / Inf and 0..255 data are both caught by the largest magnitude.
        largest = float(pixel_values.detach().abs().amax())
        if not math.isfinite(largest):
            raise ValueError("pixel_values contains NaN or Inf values.")
        if largest > self._max_abs_pixel_value:
            raise ValueError(
                f"pixel_values reach magnitude {largest:.4g}, which looks like 0..255 pixel data; the model expects "
                "normalised pixels (ArcVQImageProcessor maps images to [-1, 1]): use processor(images).pixel_values "
                "or (x / 255 - 0.5) / 0.5."
            )
        return pixel_values.to(self.quant_conv.weight.dtype)  # not the codebook: a swapped-in quantizer may build it

    def _check_image_tokens(self, image_tokens: torch.Tensor, latent_shape: tuple[int, int] | None) -> torch.Tensor:
        if not isinstance(image_tokens, torch.Tensor):
            raise TypeError(f"image_tokens must be a torch.Tensor, got {type(image_tokens).__name__}.")
        if image_tokens.is_floating_point() or image_tokens.is_complex() or image_tokens.dtype == torch.bool:
            raise TypeError(f"image_tokens must be an integer tensor of code ids, got dtype {image_tokens.dtype}.")
        if image_tokens.ndim == 2:
            length = image_tokens.shape[1]
            if latent_shape is None:
                side = math.isqrt(length)
                if side * side != length:
                    raise ValueError(
                        f"image_tokens of shape (batch, {length}) is not square; pass latent_shape=(h, w)."
                    )
                latent_shape = (side, side)
            if latent_shape[0] * latent_shape[1] != length:
                raise ValueError(f"latent_shape {tuple(latent_shape)} does not hold {length} tokens.")
            image_tokens = image_tokens.reshape(image_tokens.shape[0], *latent_shape)
        elif image_tokens.ndim != 3:
            raise ValueError(
                f"image_tokens must have shape (batch, h, w) or (batch, h*w), got {tuple(image_tokens.shape)}."
            )
        if image_tokens.numel() == 0:
            raise ValueError(f"image_tokens is empty (shape {tuple(image_tokens.shape)}).")
        low, high = int(image_tokens.min()), int(image_tokens.max())
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(
                f"image_tokens must lie in [0, {self.config.codebook_size - 1}] (codebook_size "
                f"{self.config.codebook_size}), got values in [{low}, {high}]."
            )
        return image_tokens.long()

    # ----- encode / decode -------------------------------------------------------------------------------------
    def _latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(pixel_values))

    def decode_latents(self, quantized_latents: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) code vectors -> (B, C, H, W) pixels."""
        return self.decoder(self.post_quant_conv(quantized_latents))

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> ArcVQEncoderOutput | tuple:
        """pixel_values (B, C, H, W) in [-1, 1] -> image_tokens (B, H/f, W/f) and latents (B, D, H/f, W/f).

        Another floating dtype is cast to the model's; integer or 0..255 pixels are refused with a clear error.
        """
        pixel_values = self._prepare_pixel_values(pixel_values)
        latents = self._latents(pixel_values)
        # The arc loss only trains the encoder: encode() has no use for it.
        quantized, indices, _, losses = self.quantizer(
            latents, compute_vq_loss=True, compute_arc_loss=False, return_loss_breakdown=True
        )
        output = ArcVQEncoderOutput(
            image_tokens=indices, latents=latents, quantized_latents=quantized, quantization_loss=losses.vq_loss
        )
        return output if return_dict else output.to_tuple()

    def decode(self, image_tokens: torch.Tensor, latent_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """image_tokens (B, h, w) or (B, h*w) int ids -> pixels (B, C, h*f, w*f).

        A flat sequence is taken as square unless `latent_shape=(h, w)` says otherwise.
        """
        image_tokens = self._check_image_tokens(image_tokens, latent_shape)
        codes = self.quantizer.codes_for(image_tokens.to(self.codebook.device)).permute(0, 3, 1, 2)
        return self.decode_latents(codes.contiguous())

    def reconstruction_loss(self, reconstruction: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """MSE / data_variance (paper's VQ-VAE) or L1 (VQGAN), in float32."""
        if self.config.reconstruction_loss == "l1":
            return F.l1_loss(reconstruction.float(), pixel_values.float())
        return F.mse_loss(reconstruction.float(), pixel_values.float()) / self.config.data_variance

    def forward(
        self, pixel_values: torch.Tensor, return_loss: bool = True, return_dict: bool = True
    ) -> ArcVQModelOutput | tuple:
        """pixel_values (B, C, H, W) in [-1, 1] -> ArcVQModelOutput.

        In training mode the quantizer first projects the codebook into the ball of radius R(step).
        """
        pixel_values = self._prepare_pixel_values(pixel_values)
        latents = self._latents(pixel_values)
        quantized, indices, _, parts = self.quantizer(
            latents, compute_vq_loss=return_loss, compute_arc_loss=return_loss, return_loss_breakdown=True
        )
        reconstruction = self.decode_latents(quantized)
        losses = {}
        if return_loss:
            reconstruction_loss = self.reconstruction_loss(reconstruction, pixel_values)
            loss = reconstruction_loss + parts.vq_loss
            if parts.arc_loss is not None:
                loss = loss + parts.arc_weight * parts.arc_loss
            losses = {
                "loss": loss,
                "reconstruction_loss": reconstruction_loss,
                "quantization_loss": parts.vq_loss,
                "arc_loss": parts.arc_loss,
            }
        # Built in one go so that the dict / tuple views follow the field order (loss first).
        output = ArcVQModelOutput(
            reconstruction=reconstruction,
            image_tokens=indices,
            arc_weight=parts.arc_weight,
            ball_radius=parts.ball_radius,
            **losses,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["ArcVQEncoderOutput", "ArcVQModel", "ArcVQModelOutput", "ArcVQPreTrainedModel"]
