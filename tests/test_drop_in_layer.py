"""ArcVQ as a drop-in quantizer layer: `quantized, indices, loss = SphericalAngularMarginQuantizer(...)(x)`.

The layer `ArcVQModel` uses is this same layer (one quantizer, not two); its loss is the formulas of docs/method.md
§1.3-1.5, checked here against a literal float64 computation; it takes channel-first and channel-last input; the
Trainer callback drives its step inside any model.
"""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from example_scripts import load_example
from torch import nn
from transformers import Trainer, TrainerState, TrainingArguments

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.model.quantization import SphericalAngularMarginQuantizer
from arcvq_hf.training.trainer import ArcVQScheduleCallback


def _literal_loss(latents, codebook, step, beta=0.25, scale=5.0, margin=0.1, top_k=3, gamma0=1.0, decay=5e-4):
    """vq loss + gamma_t * arc loss for (N, D) latents, written from the formulas in float64 with acos."""
    z, e = latents.double(), codebook.double()
    z_unit, e_unit = z / z.norm(dim=1, keepdim=True), e / e.norm(dim=1, keepdim=True)
    nearest = (z_unit @ e_unit.T).argmax(dim=1)
    squared = ((z - e[nearest]) ** 2).mean()
    vq = squared + beta * squared  # codebook term and commitment term have the same value
    cosines = e_unit @ z_unit.T  # (K, N)
    positives = cosines.topk(top_k, dim=1).indices
    logits = (scale * cosines).scatter(
        1, positives, scale * torch.cos(torch.acos(cosines.gather(1, positives)) + margin)
    )
    arc = -torch.log(torch.exp(logits.gather(1, positives)).sum(1) / torch.exp(logits).sum(1)).mean()
    return vq + gamma0 * math.exp(-decay * step) * arc, nearest


def test_every_knob_defaults_to_the_paper():
    layer = SphericalAngularMarginQuantizer()
    assert (layer.codebook_size, layer.codebook_dim, layer.distance) == (512, 64, "cosine")
    assert (layer.commitment_cost, layer.ball_growth_rate, layer.arc_scale, layer.arc_margin) == (0.25, 3e-4, 5.0, 0.1)
    assert (layer.arc_top_k, layer.arc_weight, layer.arc_weight_decay) == (3, 1.0, 5e-4)
    torch.testing.assert_close(layer.codebook.norm(dim=1), torch.ones(512))  # U(-1, 1) rows scaled to norm 1


def test_loss_equals_the_formulas_of_the_method():
    torch.manual_seed(0)
    layer = SphericalAngularMarginQuantizer(codebook_size=40, codebook_dim=8, use_ball_bound=False)
    layer.set_step(700)
    latents = torch.randn(3, 8, 4, 5)
    _, indices, loss = layer.train()(latents)
    expected, nearest = _literal_loss(latents.permute(0, 2, 3, 1).reshape(-1, 8), layer.codebook.detach(), step=700)
    assert torch.equal(indices.reshape(-1), nearest)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_eval_mode_loss_has_no_arc_term_unless_asked():
    torch.manual_seed(1)
    layer = SphericalAngularMarginQuantizer(codebook_size=16, codebook_dim=4).eval()
    latents = torch.randn(2, 4, 3, 3)
    _, _, loss, parts = layer(latents, return_loss_breakdown=True)
    assert parts.arc_loss is None and torch.equal(loss, parts.vq_loss)
    _, _, loss_with_arc, parts = layer(latents, compute_arc_loss=True, return_loss_breakdown=True)
    assert torch.equal(loss_with_arc, parts.vq_loss + parts.arc_weight * parts.arc_loss)


def test_channel_first_and_channel_last_layouts_agree():
    torch.manual_seed(2)
    channel_last = SphericalAngularMarginQuantizer(codebook_size=32, codebook_dim=6).eval()
    channel_first = SphericalAngularMarginQuantizer(codebook_size=32, codebook_dim=6, channel_first=True).eval()
    channel_first.load_state_dict(channel_last.state_dict())
    image = torch.randn(2, 6, 3, 4)  # (B, D, H, W)
    sequence = image.flatten(2).transpose(1, 2)  # (B, N, D)
    q_image, i_image, l_image = channel_last(image)
    q_seq, i_seq, l_seq = channel_last(sequence)
    q_first, i_first, l_first = channel_first(sequence.transpose(1, 2))  # (B, D, N)
    q_flat, i_flat, _ = channel_last(sequence.reshape(-1, 6))  # (N, D)
    assert i_image.shape == (2, 3, 4) and i_seq.shape == i_first.shape == (2, 12) and i_flat.shape == (24,)
    assert (
        torch.equal(i_image.flatten(1), i_seq) and torch.equal(i_seq, i_first) and torch.equal(i_seq.flatten(), i_flat)
    )
    assert torch.equal(q_image.flatten(2).transpose(1, 2), q_seq) and torch.equal(q_first.transpose(1, 2), q_seq)
    assert q_image.shape == image.shape and q_first.shape == (2, 6, 12)
    torch.testing.assert_close(q_seq, channel_last.codebook[i_seq].detach())
    assert torch.equal(l_image, l_seq) and torch.equal(l_seq, l_first)


def test_arcvq_model_uses_the_same_layer_and_gives_identical_outputs():
    torch.manual_seed(3)
    config = ArcVQConfig(num_channels=1, hidden_size=16, residual_hidden_size=8, codebook_size=24, codebook_dim=8)
    model = ArcVQModel(config)
    model.set_training_step(250)
    assert type(model.quantizer) is SphericalAngularMarginQuantizer
    layer = SphericalAngularMarginQuantizer(
        codebook_size=24, codebook_dim=8, arc_weight=config.arc_weight, arc_weight_decay=config.arc_weight_decay
    )
    layer.load_state_dict(model.quantizer.state_dict())
    assert layer.current_step == 250
    pixels = torch.rand(2, 1, 12, 12) * 2 - 1
    model.eval()
    encoded = model.encode(pixels)
    quantized, indices, _ = layer.eval()(encoded.latents)
    assert torch.equal(indices, encoded.image_tokens) and torch.equal(quantized, encoded.quantized_latents)
    model.train()
    layer.train()
    torch.manual_seed(4)
    output = model(pixels)
    latents = model.quant_conv(model.encoder(pixels))
    _, _, layer_loss = layer(latents)
    model_quantizer_loss = output.quantization_loss + output.arc_weight * output.arc_loss
    assert torch.equal(layer_loss, model_quantizer_loss)
    assert torch.equal(layer.codebook, model.codebook)  # the same ball bound applied to the same codes


def test_wrong_input_is_refused_with_the_fix():
    layer = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4)
    with pytest.raises(ValueError, match="codebook_dim=4.*project them to 4 dims"):
        layer(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="channel_first"):
        layer(torch.randn(2, 4, 7))  # (B, D, N) read as (B, N, D): 7 channels
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        layer(torch.randn(4))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        layer.set_step(-1)
    with pytest.raises(ValueError, match="distance must be"):
        SphericalAngularMarginQuantizer(distance="manhattan")


class _OwnAutoencoder(nn.Module):
    """A user's model with two SAMP layers and a loss, as Trainer takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(1, 4, 2, stride=2)
        self.first = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4)
        self.second = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4, ball_growth_rate=0.1)
        self.decoder = nn.ConvTranspose2d(4, 1, 2, stride=2)
        self.seen_steps: list[tuple[int, int]] = []

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen_steps.append((self.first.current_step, self.second.current_step))
        quantized, _, first_loss = self.first(self.encoder(pixel_values))
        quantized, _, second_loss = self.second(quantized)
        loss = F.mse_loss(self.decoder(quantized), pixel_values) + first_loss + second_loss
        return {"loss": loss}


def test_trainer_callback_drives_every_layer_of_a_users_model(tmp_path):
    torch.manual_seed(5)
    model = _OwnAutoencoder()
    data = [{"pixel_values": torch.rand(1, 4, 4) * 2 - 1} for _ in range(12)]
    args = TrainingArguments(
        str(tmp_path), per_device_train_batch_size=4, max_steps=3, report_to="none", use_cpu=True, save_strategy="no"
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[ArcVQScheduleCallback()]).train()
    assert model.seen_steps == [(0, 0), (1, 1), (2, 2)]
    assert model.first.current_step == model.second.current_step == 3
    assert model.second.codebook.norm(dim=1).max() <= math.exp(0.1 * 2) + 1e-5


def test_callback_says_when_a_model_has_no_layer_to_drive(tmp_path, caplog):
    args = TrainingArguments(str(tmp_path), max_steps=1, report_to="none", use_cpu=True, save_strategy="no")
    callback, state = ArcVQScheduleCallback(), TrainerState()
    with caplog.at_level(logging.WARNING):
        callback.on_train_begin(args, state=state, control=None, model=nn.Linear(2, 2))
        callback.on_step_begin(args, state=state, control=None, model=nn.Linear(2, 2))
    assert "found no SphericalAngularMarginQuantizer layer in Linear" in caplog.text


def test_the_example_trains_a_users_autoencoder(tmp_path):
    example = load_example("train_own_autoencoder")
    metrics = example.main(["--max_steps", "4", "--batch_size", "16", "--output_dir", str(tmp_path)])
    assert set(metrics) == {"utilization", "perplexity", "psnr"} and math.isfinite(metrics["psnr"])
    assert 0 < metrics["utilization"] <= 1 and (tmp_path / "metrics.json").is_file()
