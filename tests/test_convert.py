"""Conversion of the authors' VQ-VAE and of taming VQGAN checkpoints.

Each test builds a state dict in the source layout itself and checks the converted -> saved -> loaded model against
a functional forward pass written here directly on the source tensors (docs/method.md §1 for the VQ-VAE, taming's
Encoder / Decoder for the VQGAN), so the key mapping is checked against an independent reading of the layout.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.interop.convert_common import resolve_checkpoint
from arcvq_hf.interop.convert_taming_checkpoint import convert_taming_checkpoint, convert_taming_state_dict
from arcvq_hf.interop.convert_taming_checkpoint import main as taming_main
from arcvq_hf.interop.convert_vqvae_checkpoint import (
    MNIST_DATA_VARIANCE,
    convert_vqvae_checkpoint,
    convert_vqvae_state_dict,
)
from arcvq_hf.interop.convert_vqvae_checkpoint import main as vqvae_main
from arcvq_hf.interop.diffusers_export import to_diffusers

# ----------------------------------------------------------------------------------------------------------------
# Source-layout state dicts with random weights
# ----------------------------------------------------------------------------------------------------------------


def _conv(generator: torch.Generator, out_channels: int, in_channels: int, kernel: int) -> torch.Tensor:
    fan_in = in_channels * kernel * kernel
    return torch.randn(out_channels, in_channels, kernel, kernel, generator=generator) / fan_in**0.5


def _bias(generator: torch.Generator, channels: int) -> torch.Tensor:
    return 0.1 * torch.randn(channels, generator=generator)


def authors_vqvae_state_dict(
    channels: int = 3,
    hidden: int = 32,
    residual_hidden: int = 8,
    layers: int = 2,
    codes: int = 32,
    dim: int = 8,
    residual_biases: bool = True,
) -> dict[str, torch.Tensor]:
    """`modules.Model(...).state_dict()` of the authors' release (every conv with a bias); without
    `residual_biases`, the PyTorch VQ-VAE notebook's layout (bias-free residual convolutions)."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "_encoder._conv_1.weight": _conv(g, hidden // 2, channels, 4),
        "_encoder._conv_1.bias": _bias(g, hidden // 2),
        "_encoder._conv_2.weight": _conv(g, hidden, hidden // 2, 4),
        "_encoder._conv_2.bias": _bias(g, hidden),
        "_encoder._conv_3.weight": _conv(g, hidden, hidden, 3),
        "_encoder._conv_3.bias": _bias(g, hidden),
        "_pre_vq_conv.weight": _conv(g, dim, hidden, 1),
        "_pre_vq_conv.bias": _bias(g, dim),
        "_vq_vae.embedding.weight": torch.randn(codes, dim, generator=g),
        "_decoder._conv_1.weight": _conv(g, hidden, dim, 3),
        "_decoder._conv_1.bias": _bias(g, hidden),
        # ConvTranspose2d weights are (in, out, k, k).
        "_decoder._conv_trans_1.weight": _conv(g, hidden, hidden // 2, 4),
        "_decoder._conv_trans_1.bias": _bias(g, hidden // 2),
        "_decoder._conv_trans_2.weight": _conv(g, hidden // 2, channels, 4),
        "_decoder._conv_trans_2.bias": _bias(g, channels),
    }
    for part in ("_encoder", "_decoder"):
        for i in range(layers):
            block = f"{part}._residual_stack._layers.{i}._block"
            sd[f"{block}.1.weight"] = _conv(g, residual_hidden, hidden, 3)
            sd[f"{block}.3.weight"] = _conv(g, hidden, residual_hidden, 1)
            if residual_biases:
                sd[f"{block}.1.bias"] = _bias(g, residual_hidden)
                sd[f"{block}.3.bias"] = _bias(g, hidden)
    return sd


def _authors_residual_stack(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Their block is `x + Sequential(ReLU(inplace=True), Conv3x3, ReLU, Conv1x1)(x)`: the in-place ReLU overwrites x
    before the addition, so the skip carries relu(x)."""
    i = 0
    while f"{prefix}._layers.{i}._block.1.weight" in sd:
        block = f"{prefix}._layers.{i}._block"
        x = F.relu(x)
        h = F.conv2d(x, sd[f"{block}.1.weight"], sd.get(f"{block}.1.bias"), padding=1)
        x = x + F.conv2d(F.relu(h), sd[f"{block}.3.weight"], sd.get(f"{block}.3.bias"))
        i += 1
    return F.relu(x)


def authors_vqvae_encode(sd: dict, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.conv2d(x, sd["_encoder._conv_1.weight"], sd["_encoder._conv_1.bias"], stride=2, padding=1))
    h = F.relu(F.conv2d(h, sd["_encoder._conv_2.weight"], sd["_encoder._conv_2.bias"], stride=2, padding=1))
    h = F.conv2d(h, sd["_encoder._conv_3.weight"], sd["_encoder._conv_3.bias"], padding=1)
    h = _authors_residual_stack(sd, "_encoder._residual_stack", h)
    return F.conv2d(h, sd["_pre_vq_conv.weight"], sd["_pre_vq_conv.bias"])


def authors_vqvae_decode(sd: dict, codes: torch.Tensor) -> torch.Tensor:
    h = F.conv2d(codes, sd["_decoder._conv_1.weight"], sd["_decoder._conv_1.bias"], padding=1)
    h = _authors_residual_stack(sd, "_decoder._residual_stack", h)
    h = F.relu(F.conv_transpose2d(h, sd["_decoder._conv_trans_1.weight"], sd["_decoder._conv_trans_1.bias"], 2, 1))
    return F.conv_transpose2d(h, sd["_decoder._conv_trans_2.weight"], sd["_decoder._conv_trans_2.bias"], 2, 1)


def taming_state_dict(
    channels: int = 3,
    ch: int = 16,
    ch_mult: tuple[int, ...] = (1, 2),
    num_res_blocks: int = 1,
    attention: bool = True,
    z_channels: int = 8,
    codes: int = 32,
    dim: int = 4,
) -> dict[str, torch.Tensor]:
    """A taming VQModel state dict (attention only at the lowest resolution when `attention`) plus loss.* keys."""
    g = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}
    levels = len(ch_mult)

    def conv(name: str, out_channels: int, in_channels: int, kernel: int) -> None:
        sd[f"{name}.weight"] = _conv(g, out_channels, in_channels, kernel)
        sd[f"{name}.bias"] = _bias(g, out_channels)

    def norm(name: str, channels_: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(channels_, generator=g)
        sd[f"{name}.bias"] = _bias(g, channels_)

    def resnet(name: str, in_channels: int, out_channels: int) -> None:
        norm(f"{name}.norm1", in_channels)
        conv(f"{name}.conv1", out_channels, in_channels, 3)
        norm(f"{name}.norm2", out_channels)
        conv(f"{name}.conv2", out_channels, out_channels, 3)
        if in_channels != out_channels:
            conv(f"{name}.nin_shortcut", out_channels, in_channels, 1)

    def attn(name: str, channels_: int) -> None:
        norm(f"{name}.norm", channels_)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", channels_, channels_, 1)

    conv("encoder.conv_in", ch, channels, 3)
    block_in = ch
    for i, mult in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * mult)
            block_in = ch * mult
            if attention and i == levels - 1:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    for coder in ("encoder", "decoder"):
        width = ch * ch_mult[-1]
        resnet(f"{coder}.mid.block_1", width, width)
        attn(f"{coder}.mid.attn_1", width)
        resnet(f"{coder}.mid.block_2", width, width)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", z_channels, block_in, 3)
    conv("quant_conv", dim, z_channels, 1)
    sd["quantize.embedding.weight"] = torch.randn(codes, dim, generator=g)
    conv("post_quant_conv", z_channels, dim, 1)
    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", block_in, z_channels, 3)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if attention and i == levels - 1:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", channels, block_in, 3)
    # Training-only weights a taming checkpoint carries: discriminator and perceptual-loss heads.
    conv("loss.discriminator.main.0", 8, channels, 4)
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1, generator=g)
    return sd


# ----- a functional taming VQGAN (GroupNorm eps 1e-6, swish, single-head attention on 1x1 convs) -----------------


def _taming_norm(sd: dict, name: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    return F.group_norm(x, groups, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _taming_conv(sd: dict, name: str, x: torch.Tensor, **kwargs) -> torch.Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kwargs)


def _taming_resnet(sd: dict, name: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    h = _taming_conv(sd, f"{name}.conv1", F.silu(_taming_norm(sd, f"{name}.norm1", x, groups)), padding=1)
    h = _taming_conv(sd, f"{name}.conv2", F.silu(_taming_norm(sd, f"{name}.norm2", h, groups)), padding=1)
    if f"{name}.nin_shortcut.weight" in sd:
        x = _taming_conv(sd, f"{name}.nin_shortcut", x)
    return x + h


def _taming_attn(sd: dict, name: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    h = _taming_norm(sd, f"{name}.norm", x, groups)
    q, k, v = (_taming_conv(sd, f"{name}.{part}", h) for part in ("q", "k", "v"))
    b, c, height, width = q.shape
    q = q.reshape(b, c, height * width).permute(0, 2, 1)  # (b, hw, c)
    weights = torch.softmax(torch.bmm(q, k.reshape(b, c, height * width)) * c**-0.5, dim=2)  # (b, hw_q, hw_k)
    h = torch.bmm(v.reshape(b, c, height * width), weights.permute(0, 2, 1)).reshape(b, c, height, width)
    return x + _taming_conv(sd, f"{name}.proj_out", h)


def _taming_mid(sd: dict, coder: str, h: torch.Tensor, groups: int) -> torch.Tensor:
    h = _taming_resnet(sd, f"{coder}.mid.block_1", h, groups)
    h = _taming_attn(sd, f"{coder}.mid.attn_1", h, groups)
    return _taming_resnet(sd, f"{coder}.mid.block_2", h, groups)


def taming_encode(sd: dict, x: torch.Tensor, levels: int, num_res_blocks: int, groups: int) -> torch.Tensor:
    """Pixels -> pre-quantization latents (after quant_conv)."""
    h = _taming_conv(sd, "encoder.conv_in", x, padding=1)
    for i in range(levels):
        for j in range(num_res_blocks):
            h = _taming_resnet(sd, f"encoder.down.{i}.block.{j}", h, groups)
            if f"encoder.down.{i}.attn.{j}.q.weight" in sd:
                h = _taming_attn(sd, f"encoder.down.{i}.attn.{j}", h, groups)
        if i != levels - 1:
            h = _taming_conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = _taming_mid(sd, "encoder", h, groups)
    h = _taming_conv(sd, "encoder.conv_out", F.silu(_taming_norm(sd, "encoder.norm_out", h, groups)), padding=1)
    return _taming_conv(sd, "quant_conv", h)


def taming_decode(sd: dict, codes: torch.Tensor, levels: int, num_res_blocks: int, groups: int) -> torch.Tensor:
    """Code vectors (B, D, h, w) -> pixels (post_quant_conv, then the decoder)."""
    h = _taming_conv(sd, "decoder.conv_in", _taming_conv(sd, "post_quant_conv", codes), padding=1)
    h = _taming_mid(sd, "decoder", h, groups)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            h = _taming_resnet(sd, f"decoder.up.{i}.block.{j}", h, groups)
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                h = _taming_attn(sd, f"decoder.up.{i}.attn.{j}", h, groups)
        if i != 0:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = _taming_conv(sd, f"decoder.up.{i}.upsample.conv", h, padding=1)
    return _taming_conv(sd, "decoder.conv_out", F.silu(_taming_norm(sd, "decoder.norm_out", h, groups)), padding=1)


def cosine_tokens(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, h, w) ids of the code with the largest cosine."""
    flat = F.normalize(latents.permute(0, 2, 3, 1), dim=-1)
    return (flat @ F.normalize(codebook, dim=-1).T).argmax(-1)


def euclidean_tokens(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    flat = latents.permute(0, 2, 3, 1)
    return ((flat[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)


def _pixels(channels: int, size: int = 16) -> torch.Tensor:
    return torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1


# ----------------------------------------------------------------------------------------------------------------
# Authors' VQ-VAE
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "suffix", "residual_biases"), [(3, ".pt", True), (1, ".safetensors", True), (3, ".pt", False)]
)
def test_vqvae_conversion_matches_functional_forward(tmp_path, channels, suffix, residual_biases):
    sd = authors_vqvae_state_dict(channels=channels, residual_biases=residual_biases)
    path = tmp_path / f"authors{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    out = convert_vqvae_checkpoint(path, tmp_path / "converted")
    model = ArcVQModel.from_pretrained(out).eval()
    processor = ArcVQImageProcessor.from_pretrained(out)
    config = model.config
    assert (config.backbone, config.num_channels, config.hidden_size, config.residual_hidden_size) == (
        "vqvae",
        channels,
        32,
        8,
    )
    assert (config.num_residual_layers, config.codebook_size, config.codebook_dim) == (2, 32, 8)
    assert config.distance == "cosine" and config.use_arc_margin and config.use_ball_bound
    # The authors' recipe, not ours: gamma0 1 and their MNIST model's MSE normaliser.
    assert (config.arc_weight, config.arc_weight_decay, config.arc_scale, config.arc_margin) == (1.0, 5e-4, 5.0, 0.1)
    assert (config.arc_top_k, config.ball_growth_rate, config.legacy_beta_placement) == (3, 3e-4, False)
    assert config.data_variance == MNIST_DATA_VARIANCE
    assert processor.num_channels == channels and processor.size_divisor == 4
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".safetensors")) == ["model.safetensors"]

    x = _pixels(channels)
    with torch.no_grad():
        encoded = model.encode(x)
        reference_latents = authors_vqvae_encode(sd, x)
        torch.testing.assert_close(encoded.latents, reference_latents, atol=1e-5, rtol=1e-5)
        reference_tokens = cosine_tokens(reference_latents, sd["_vq_vae.embedding.weight"])
        assert torch.equal(encoded.image_tokens, reference_tokens)
        codes = sd["_vq_vae.embedding.weight"][reference_tokens].permute(0, 3, 1, 2)
        torch.testing.assert_close(model.decode(reference_tokens), authors_vqvae_decode(sd, codes), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            model(x, return_loss=False).reconstruction, authors_vqvae_decode(sd, codes), atol=1e-5, rtol=0
        )


def authors_training_loss(sd: dict, x: torch.Tensor, step: int, data_variance: float) -> torch.Tensor:
    """The authors' training loss at `step` (their main.py `train` with gamma 1, gamma_decay 5e-4; modules.Model with
    s 5, m 0.1, top-k 3; BBNR alpha 3e-4 before quantization): mse / data_variance + codebook + 0.25 * commitment
    + gamma * exp(-gamma_decay * step) * arc, with the arc loss written the way they write it (acos, dense)."""
    codebook = sd["_vq_vae.embedding.weight"]
    norms = codebook.norm(dim=1, keepdim=True)
    radius = torch.exp(torch.tensor(3e-4 * step))
    codebook = torch.where(norms > radius, codebook * radius / norms, codebook)
    z = authors_vqvae_encode(sd, x)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    tokens = (F.normalize(flat, dim=1) @ F.normalize(codebook, dim=1).T).argmax(1)
    z_q = codebook[tokens]
    vq = F.mse_loss(z_q, flat.detach()) + 0.25 * F.mse_loss(z_q.detach(), flat)
    decoded_codes = (flat + (z_q - flat).detach()).reshape(z.shape[0], z.shape[2], z.shape[3], -1)
    reconstruction = authors_vqvae_decode(sd, decoded_codes.permute(0, 3, 1, 2))
    cosines = F.normalize(codebook, dim=1) @ F.normalize(flat, dim=1).T  # (K, N)
    top_values, top_index = cosines.topk(3, dim=1)
    logits = cosines.clone()
    logits.scatter_(1, top_index, torch.cos(torch.acos(top_values.clamp(-1 + 1e-7, 1 - 1e-7)) + 0.1))
    logits = 5.0 * logits
    arc = -torch.log(logits.gather(1, top_index).exp().sum(1) / logits.exp().sum(1)).mean()
    return F.mse_loss(reconstruction, x) / data_variance + vq + math.exp(-5e-4 * step) * arc


def test_converted_model_continues_the_authors_training_loss():
    """With the converted config (preset arcvq-authors, their data variance) the training loss at step 10 is theirs."""
    sd = authors_vqvae_state_dict(channels=1)
    model = convert_vqvae_state_dict(sd, data_variance=0.3814).train()
    model.set_training_step(10)
    x = _pixels(1)
    ours = model(x).loss
    theirs = authors_training_loss(sd, x, step=10, data_variance=0.3814)
    assert abs(ours.item() - theirs.item()) <= 1e-5 * max(1.0, abs(theirs.item()))
    # Our default recipe (gamma0 1.5) is a different loss: the preset matters.
    ours_default = convert_vqvae_state_dict(sd, preset="arcvq", data_variance=0.3814).train()
    ours_default.set_training_step(10)
    assert abs(ours_default(x).loss.item() - theirs.item()) > 1e-3


def test_hub_checkpoints_resolve_by_hf_path_and_fail_clearly_offline(tmp_path, monkeypatch):
    local = tmp_path / "best.pt"
    local.write_bytes(b"")
    assert resolve_checkpoint(local) == local
    with pytest.raises(
        FileNotFoundError, match=r"No checkpoint file at .*absent\.pt\. For a file on the Hub write hf://"
    ):
        resolve_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="expected hf://owner/repo/path/in/repo"):
        resolve_checkpoint("hf://goals4292/ArcVQ-VAE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match=r"'MNIST/best\.pt' from the Hub repo 'goals4292/ArcVQ-VAE'"):
        resolve_checkpoint("hf://goals4292/ArcVQ-VAE/MNIST/best.pt")


def test_vqvae_round_trip_and_baseline_preset(tmp_path):
    sd = authors_vqvae_state_dict()
    in_memory = convert_vqvae_state_dict(sd, preset="vq-baseline")
    assert in_memory.config.distance == "euclidean"
    path = tmp_path / "authors.pth"
    torch.save(sd, path)
    vqvae_main([str(path), str(tmp_path / "out"), "--preset", "vq-baseline", "--image-mean", "0.5", "--image-std", "1"])
    loaded = ArcVQModel.from_pretrained(tmp_path / "out").eval()
    saved, reloaded = in_memory.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[key], reloaded[key]) for key in saved)
    # Every source tensor lands unchanged in the converted model.
    assert torch.equal(reloaded["quant_conv.weight"], sd["_pre_vq_conv.weight"])
    for parameter in ("weight", "bias"):
        assert torch.equal(
            reloaded[f"decoder.residual_stack.layers.1.conv_1x1.{parameter}"],
            sd[f"_decoder._residual_stack._layers.1._block.3.{parameter}"],
        )
    processor = ArcVQImageProcessor.from_pretrained(tmp_path / "out")
    assert processor.image_mean == [0.5] * 3 and processor.image_std == [1.0] * 3
    x = _pixels(3)
    with torch.no_grad():
        tokens = loaded.encode(x).image_tokens
    assert torch.equal(tokens, euclidean_tokens(authors_vqvae_encode(sd, x), sd["_vq_vae.embedding.weight"]))


def test_vqvae_ema_quantizer_layout_is_read(tmp_path):
    """The notebook's VectorQuantizerEMA names the codebook `_embedding` and carries EMA statistics."""
    sd = authors_vqvae_state_dict()
    sd["_vq_vae._embedding.weight"] = sd.pop("_vq_vae.embedding.weight")
    sd["_vq_vae._ema_cluster_size"] = torch.ones(32)
    sd["_vq_vae._ema_w"] = torch.randn(32, 8)
    model = convert_vqvae_state_dict(sd)
    assert torch.equal(model.codebook, sd["_vq_vae._embedding.weight"])


def test_vqvae_key_and_shape_errors_name_the_keys(tmp_path):
    sd = authors_vqvae_state_dict()
    missing = dict(sd)
    del missing["_decoder._conv_trans_2.bias"]
    with pytest.raises(ValueError, match=r"missing keys: \['_decoder\._conv_trans_2\.bias'\]"):
        convert_vqvae_state_dict(missing)

    unexpected = {**sd, "_decoder._extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected keys: \['_decoder\._extra\.weight'\]"):
        convert_vqvae_state_dict(unexpected)

    mismatched = {**sd, "_decoder._conv_1.weight": torch.zeros(32, 8, 5, 5)}
    with pytest.raises(ValueError, match=r"_decoder\._conv_1\.weight: \(32, 8, 5, 5\) in the file"):
        convert_vqvae_state_dict(mismatched)

    no_codebook = {key: value for key, value in sd.items() if not key.startswith("_vq_vae")}
    with pytest.raises(ValueError, match="_vq_vae.embedding.weight"):
        convert_vqvae_state_dict(no_codebook)

    # A failed conversion leaves no output folder behind.
    path = tmp_path / "bad.pt"
    torch.save(missing, path)
    with pytest.raises(ValueError):
        convert_vqvae_checkpoint(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vqvae_main([str(tmp_path / "absent.pt"), str(tmp_path / "out")])
    assert exit_info.value.code == 1 and "No checkpoint file" in capsys.readouterr().err
    path = tmp_path / "vqgan.pt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(16, 3, 3, 3)}}, path)
    with pytest.raises(SystemExit) as exit_info:
        taming_main([str(path), str(tmp_path / "out")])
    assert exit_info.value.code == 1 and "error: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_needs_overwrite(tmp_path):
    path = tmp_path / "authors.pt"
    torch.save(authors_vqvae_state_dict(), path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_vqvae_checkpoint(path, out)
    assert (out / "keep.txt").read_text() == "user data"
    # --overwrite replaces only a saved model folder (issue 23: it used to delete any folder's contents).
    with pytest.raises(FileExistsError, match="not a saved model folder"):
        convert_vqvae_checkpoint(path, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "user data"
    (out / "config.json").write_text("{}")
    convert_vqvae_checkpoint(path, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["authors.pt", "out"]


class _Payload:
    """Unpickling this calls open(marker, 'w'): a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_unreadable_checkpoint_files_are_named_without_a_traceback(tmp_path, capsys, suffix, damage):
    good = tmp_path / f"good{suffix}"
    sd = authors_vqvae_state_dict()
    save_file(sd, str(good)) if suffix == ".safetensors" else torch.save(sd, good)
    payload = good.read_bytes()
    bad = tmp_path / f"{damage}{suffix}"
    bad.write_bytes({"truncated": payload[: len(payload) // 2], "empty": b"", "text": b"hello, not weights"}[damage])
    with pytest.raises(SystemExit) as exit_info:
        vqvae_main([str(bad), str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in message and bad.name in message
    expected = "is empty" if damage == "empty" else "is not a readable"
    assert expected in message and "arbitrary code" not in message
    assert not (tmp_path / "out").exists()


def test_pickled_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    live = pickle.dumps(_Payload(str(tmp_path / "live_check")))
    pickle.loads(live)  # the payload is live: plain unpickling runs it
    assert (tmp_path / "live_check").exists()

    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": authors_vqvae_state_dict(), "callbacks": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="Refusing to load"):
        convert_vqvae_checkpoint(path, tmp_path / "out")
    with pytest.raises(ValueError, match="Refusing to load"):
        convert_taming_checkpoint(path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# taming VQGAN
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ch_mult", "attention"), [((1, 2, 2), True), ((1, 2), False)])
def test_taming_conversion_matches_functional_forward(tmp_path, ch_mult, attention):
    sd = taming_state_dict(ch_mult=ch_mult, attention=attention)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "global_step": 7, "epoch": 1}, path)
    out = convert_taming_checkpoint(path, tmp_path / "converted", norm_num_groups=8)
    model = ArcVQModel.from_pretrained(out).eval()
    config = model.config
    assert config.backbone == "vqgan" and config.base_channels == 16
    assert config.channel_multipliers == list(ch_mult) and config.layers_per_block == 1
    assert config.attention_at_lowest_resolution is attention and config.latent_channels == 8
    assert (config.codebook_size, config.codebook_dim, config.norm_num_groups) == (32, 4, 8)
    # The authors' ImageNet recipe travels with the converted model (configs/imagenet_vqgan.yaml of their fork).
    assert (config.arc_weight, config.arc_weight_decay, config.arc_scale, config.arc_margin) == (1.0, 1e-4, 10.0, 0.1)
    assert (config.arc_top_k, config.ball_growth_rate, config.legacy_beta_placement) == (3, 5e-5, True)
    assert ArcVQImageProcessor.from_pretrained(out).size_divisor == 2 ** (len(ch_mult) - 1)

    x = _pixels(3)
    levels = len(ch_mult)
    with torch.no_grad():
        encoded = model.encode(x)
        reference_latents = taming_encode(sd, x, levels, 1, groups=8)
        torch.testing.assert_close(encoded.latents, reference_latents, atol=1e-5, rtol=1e-5)
        tokens = cosine_tokens(reference_latents, sd["quantize.embedding.weight"])
        assert torch.equal(encoded.image_tokens, tokens)
        codes = sd["quantize.embedding.weight"][tokens].permute(0, 3, 1, 2)
        reference_pixels = taming_decode(sd, codes, levels, 1, groups=8)
        torch.testing.assert_close(model.decode(tokens), reference_pixels, atol=1e-5, rtol=1e-5)

        # The converted model exports to diffusers and still decodes like taming.
        vq_model = to_diffusers(model)
        exported = vq_model.decode(tokens, force_not_quantize=True, shape=(*tokens.shape, 4)).sample
        torch.testing.assert_close(exported, reference_pixels, atol=1e-5, rtol=1e-5)


def test_taming_cli_with_safetensors_and_baseline_preset(tmp_path):
    sd = taming_state_dict(ch=32, num_res_blocks=2)
    path = tmp_path / "vqgan.safetensors"
    save_file(sd, str(path))
    taming_main([str(path), str(tmp_path / "out"), "--preset", "vq-baseline"])  # taming's default 32 groups
    model = ArcVQModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.distance == "euclidean" and model.config.layers_per_block == 2
    assert model.config.norm_num_groups == 32
    x = _pixels(3)
    with torch.no_grad():
        latents = taming_encode(sd, x, 2, 2, groups=32)
        torch.testing.assert_close(model.encode(x).latents, latents, atol=1e-5, rtol=1e-5)
        assert torch.equal(model.encode(x).image_tokens, euclidean_tokens(latents, sd["quantize.embedding.weight"]))


def test_taming_errors_name_the_keys():
    sd = taming_state_dict()
    missing = {key: value for key, value in sd.items() if not key.startswith("decoder.up.0.block.1.norm2")}
    with pytest.raises(
        ValueError,
        match=r"missing keys: \['decoder\.up\.0\.block\.1\.norm2\.weight', 'decoder\.up\.0\.block\.1\.norm2\.bias'\]",
    ):
        convert_taming_state_dict(missing, norm_num_groups=8)

    unexpected = {**sd, "decoder.up.0.block.1.temb_proj.weight": torch.zeros(16, 4)}
    with pytest.raises(ValueError, match=r"unexpected keys: \['decoder\.up\.0\.block\.1\.temb_proj\.weight'\]"):
        convert_taming_state_dict(unexpected, norm_num_groups=8)

    mismatched = {**sd, "decoder.mid.attn_1.q.weight": torch.zeros(32, 32, 3, 3)}
    with pytest.raises(ValueError, match=r"decoder\.mid\.attn_1\.q\.weight: \(32, 32, 3, 3\) in the file"):
        convert_taming_state_dict(mismatched, norm_num_groups=8)

    early_attention = taming_state_dict(attention=False)
    for part in ("q", "k", "v", "proj_out", "norm"):
        early_attention[f"encoder.down.0.attn.0.{part}.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(ValueError, match=r"attention at levels \[0\]"):
        convert_taming_state_dict(early_attention, norm_num_groups=8)

    no_conv_in = {key: value for key, value in sd.items() if not key.startswith("encoder.conv_in")}
    with pytest.raises(ValueError, match="encoder.conv_in.weight"):
        convert_taming_state_dict(no_conv_in, norm_num_groups=8)
