"""Export of the vqgan-backbone ArcVQModel to diffusers.VQModel."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import VQModel

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.interop.diffusers_export import export_folder, main, to_diffusers


def tiny_vqgan_config(preset: str = "arcvq", attention: bool = True) -> ArcVQConfig:
    return ArcVQConfig.from_preset(
        preset,
        variant="vqgan",
        base_channels=32,
        channel_multipliers=[1, 2],
        norm_num_groups=8,
        latent_channels=8,
        layers_per_block=1,
        attention_at_lowest_resolution=attention,
        codebook_size=32,
        codebook_dim=4,
    )


def tiny_vqgan(attention: bool) -> ArcVQModel:
    config = tiny_vqgan_config(attention=attention)
    torch.manual_seed(0)
    model = ArcVQModel(config).eval()
    with torch.no_grad():
        # Codes of varied norms, as after training under the ball bound (init gives all norms 1).
        model.codebook.mul_(torch.rand(32, 1) * 3 + 0.1)
    return model


def _pixels() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _assert_same_functions(model: ArcVQModel, vq_model: VQModel) -> None:
    x = _pixels()
    with torch.no_grad():
        ours = model.encode(x)
        torch.testing.assert_close(vq_model.encode(x).latents, ours.latents, atol=1e-5, rtol=1e-5)
        tokens = ours.image_tokens
        shape = (*tokens.shape, model.config.codebook_dim)
        decoded = vq_model.decode(tokens, force_not_quantize=True, shape=shape).sample
        torch.testing.assert_close(decoded, model.decode(tokens), atol=1e-5, rtol=1e-5)
        # Token ids other than the ones the encoder picked decode identically too.
        random_tokens = torch.randint(0, 32, tokens.shape, generator=torch.Generator().manual_seed(2))
        decoded = vq_model.decode(random_tokens.flatten(), force_not_quantize=True, shape=shape).sample
        torch.testing.assert_close(decoded, model.decode(random_tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["arcvq-lowdim", "ema-kmeans-restart"])
def test_models_trained_with_the_codebook_options_export_the_codes_their_decoder_reads(preset):
    """EMA / restart / k-means models carry training-only buffers, and `spherical_codes` models decode unit vectors:
    the export drops the buffers and writes the decoded codes, so decoding ids still matches exactly."""
    config = tiny_vqgan_config(preset)
    torch.manual_seed(0)
    model = ArcVQModel(config).train()
    model(_pixels())  # one training forward: k-means init, EMA update, restarts
    model.eval()
    assert {"quantizer.code_usage", "quantizer.codebook_initialized"} <= set(model.state_dict())
    vq_model = to_diffusers(model)
    expected = F.normalize(model.codebook, dim=1) if config.spherical_codes else model.codebook
    torch.testing.assert_close(vq_model.quantize.embedding.weight, expected, atol=0, rtol=0)
    _assert_same_functions(model, vq_model)


@pytest.mark.parametrize("attention", [True, False])
def test_export_matches_and_saved_folder_loads(tmp_path, attention):
    model = tiny_vqgan(attention)
    vq_model = to_diffusers(model)
    assert isinstance(vq_model, VQModel) and not vq_model.training
    assert vq_model.config.lookup_from_codebook and vq_model.config.num_vq_embeddings == 32
    expected_down = ["DownEncoderBlock2D", "AttnDownEncoderBlock2D" if attention else "DownEncoderBlock2D"]
    assert list(vq_model.config.down_block_types) == expected_down
    assert torch.equal(vq_model.quantize.embedding.weight, model.codebook)
    _assert_same_functions(model, vq_model)

    vq_model.save_pretrained(tmp_path / "vq")
    _assert_same_functions(model, VQModel.from_pretrained(tmp_path / "vq"))


def test_cli_exports_a_saved_folder_atomically(tmp_path):
    model = tiny_vqgan(attention=True)
    model.save_pretrained(tmp_path / "arcvq")
    main([str(tmp_path / "arcvq"), str(tmp_path / "vq")])
    files = sorted(path.name for path in (tmp_path / "vq").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((tmp_path / "vq" / "config.json").read_text())["_class_name"] == "VQModel"
    _assert_same_functions(model, VQModel.from_pretrained(tmp_path / "vq"))
    # No staging folders left next to the output.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["arcvq", "vq"]
    with pytest.raises(FileExistsError, match="overwrite"):
        export_folder(tmp_path / "arcvq", tmp_path / "vq")
    export_folder(tmp_path / "arcvq", tmp_path / "vq", overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["arcvq", "vq"]


def test_a_missing_source_folder_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "absent"), str(tmp_path / "vq")])
    assert exit_info.value.code == 1 and "no such local folder" in capsys.readouterr().err
    assert not (tmp_path / "vq").exists()


def test_vqvae_backbone_is_refused(tmp_path, capsys):
    model = ArcVQModel(ArcVQConfig(hidden_size=16, residual_hidden_size=8, codebook_size=16, codebook_dim=4))
    with pytest.raises(ValueError, match="Only the 'vqgan' backbone"):
        to_diffusers(model)
    model.save_pretrained(tmp_path / "vqvae")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "vqvae"), str(tmp_path / "vq")])
    assert exit_info.value.code == 1
    assert "Only the 'vqgan' backbone" in capsys.readouterr().err
    assert not (tmp_path / "vq").exists()


def test_vqmodel_quantizer_differs_only_in_assignment_rule():
    """The documented difference: VQModel's own quantizer picks the nearest code by Euclidean distance, ArcVQ by
    angle; with a codebook where the two disagree, ArcVQ's tokens decode identically through the export."""
    model = tiny_vqgan(attention=False)
    with torch.no_grad():
        model.codebook.copy_(
            torch.randn(32, 4, generator=torch.Generator().manual_seed(3)) * torch.logspace(-1, 1, 32)[:, None]
        )
    vq_model = to_diffusers(model)
    x = _pixels()
    with torch.no_grad():
        ours = model.encode(x)
        _, _, (_, _, euclidean_ids) = vq_model.quantize(vq_model.encode(x).latents)
        flat = ours.latents.permute(0, 2, 3, 1).reshape(-1, 4)
        assert torch.equal(euclidean_ids, torch.cdist(flat, model.codebook).argmin(-1))
        assert not torch.equal(euclidean_ids, ours.image_tokens.flatten())
