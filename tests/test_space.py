"""The Gradio Space (space/app.py) served in-process and driven through gradio_client: a real photo, every kind of
bad input, and 16 concurrent clients. Numbers are checked against independent recomputations (scikit-image)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from gradio_client import Client, handle_file
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_PATH = REPO_ROOT / "space" / "app.py"


def _load_app():
    spec = importlib.util.spec_from_file_location("arcvq_space_app", APP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    demo = app.build_demo(concurrency_limit=8)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server_url):
    return Client(server_url, verbose=False)


@pytest.fixture(scope="module")
def sources():
    return app.default_checkpoint(app.VQ_LABEL), app.default_checkpoint(app.ARCVQ_LABEL)


def _call(client: Client, path: Path | str, max_side: int, sources: tuple[str, str]) -> dict:
    """One /reconstruct call; images come back as uint8 arrays read from the returned PNG files."""
    outputs = client.predict(handle_file(str(path)), max_side, *sources, api_name="/reconstruct")
    names = ["status", "original", "vq", "arcvq", "vq_tokens", "arcvq_tokens", "table", "usage", "record"]
    result = dict(zip(names, outputs, strict=True))
    for name in ("original", "vq", "arcvq", "vq_tokens", "arcvq_tokens", "usage"):
        if result[name] is not None:
            assert result[name].endswith(".png"), result[name]
            result[name] = np.asarray(PIL.Image.open(result[name]))
    assert isinstance(result["record"], dict | None)
    return result


def _save(image: PIL.Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def _assert_still_serving(client: Client, tmp_path: Path, sources: tuple[str, str]) -> None:
    small = _save(PIL.Image.fromarray(skimage_data.astronaut()[::16, ::16]), tmp_path / "still_serving.png")
    result = _call(client, small, 32, sources)
    assert result["original"].shape == (32, 32, 3)
    assert result["vq"].shape == (32, 32, 3)


def _skimage_metrics(reconstruction: np.ndarray, original: np.ndarray) -> tuple[float, float]:
    pred, target = reconstruction.astype(np.float64) / 255.0, original.astype(np.float64) / 255.0
    channel_axis = 2 if target.ndim == 3 else None
    psnr = peak_signal_noise_ratio(target, pred, data_range=1.0)
    ssim = structural_similarity(
        target,
        pred,
        data_range=1.0,
        channel_axis=channel_axis,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return psnr, ssim


def test_real_photo_shapes_metrics_and_token_maps(client, sources, tmp_path):
    photo = _save(PIL.Image.fromarray(skimage_data.coffee()), tmp_path / "coffee.png")  # 600x400
    result = _call(client, photo, 256, sources)

    # 600x400 -> 256x171 (longer side 256) -> centre-cropped to multiples of 4: 256x168.
    assert "Downscaled from 600x400 to 256x171" in result["status"]
    assert "Centre-cropped 256x171 to 256x168" in result["status"]
    for name in ("original", "vq", "arcvq", "vq_tokens", "arcvq_tokens"):
        assert result[name].shape == (168, 256, 3), name
    assert result["usage"].ndim == 3 and result["usage"].shape[2] == 3

    # The original is the resized photo: compare with the package's processor on the raw photo.
    reference = ArcVQImageProcessor(max_side=256, size_divisor=4)
    expected = reference.postprocess(reference(PIL.Image.open(photo))["pixel_values"], return_tensors="np")[0]
    difference = np.abs(expected.astype(int) - result["original"].astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3

    record = result["record"]
    assert (record["height"], record["width"]) == (168, 256)
    for label, key, tokens_key in ((app.VQ_LABEL, "vq", "vq_tokens"), (app.ARCVQ_LABEL, "arcvq", "arcvq_tokens")):
        shown = record["models"][label]
        psnr, ssim = _skimage_metrics(result[key], result["original"])
        assert shown["psnr"] == pytest.approx(psnr, abs=1e-6)
        assert shown["ssim"] == pytest.approx(ssim, abs=1e-6)
        assert f"| {label} | {psnr:.2f} | {ssim:.4f} |" in result["table"]
        # Token map: one colour per factor x factor block, as many colours as codes used.
        factor = app.load_checkpoint(sources[0] if key == "vq" else sources[1]).downsampling_factor
        token_map = result[tokens_key]
        blocks = token_map.reshape(168 // factor, factor, 256 // factor, factor, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()
        palette = app.token_palette(shown["codebook_size"])
        assert len(np.unique(palette, axis=0)) == shown["codebook_size"]
        assert len(np.unique(token_map.reshape(-1, 3), axis=0)) == shown["codes_used"]
        assert 1 <= shown["codes_used"] <= shown["codebook_size"]
        assert f"{shown['codes_used']} / {shown['codebook_size']}" in result["table"]


def _png_bytes(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of any size, written row by row without holding the pixels as an image."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _photo_crop(size: int = 32) -> np.ndarray:
    return skimage_data.chelsea()[100 : 100 + size, 150 : 150 + size]


def _bad_input(kind: str, tmp_path: Path) -> Path:
    if kind == "not an image":
        path = tmp_path / "notes.txt"
        path.write_text("these are notes, not pixels\n")
    elif kind == "garbage named .png":
        path = tmp_path / "garbage.png"
        path.write_bytes(np.random.RandomState(0).bytes(5000))
    elif kind == "truncated":
        buffer = io.BytesIO()
        PIL.Image.fromarray(skimage_data.coffee()).save(buffer, format="PNG")
        path = tmp_path / "truncated.png"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "1x1":
        path = _save(PIL.Image.new("RGB", (1, 1), (200, 30, 30)), tmp_path / "one_pixel.png")
    elif kind == "10000x10000":
        path = tmp_path / "huge.png"
        path.write_bytes(_png_bytes(10_000, 10_000))
    else:
        raise ValueError(kind)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not an image", "notes.txt is not an image this demo can read"),
        ("garbage named .png", "garbage.png is not an image this demo can read"),
        ("truncated", "truncated.png could not be decoded (truncated or corrupt file"),
        ("1x1", "both sides must be at least 16 px"),
        ("10000x10000", "huge.png is 10000x10000 pixels (100.0 MP); this demo accepts up to 40 MP"),
    ],
)
def test_refused_inputs_give_a_message_and_the_server_keeps_serving(client, sources, tmp_path, kind, message):
    result = _call(client, _bad_input(kind, tmp_path), 256, sources)
    assert message in result["status"]
    assert "Traceback" not in result["status"]
    assert all(result[name] is None for name in ("original", "vq", "arcvq", "vq_tokens", "arcvq_tokens", "usage"))
    _assert_still_serving(client, tmp_path, sources)


def test_grayscale_image(client, sources, tmp_path):
    grey = skimage_data.camera()[200:232, 200:232]
    result = _call(client, _save(PIL.Image.fromarray(grey, mode="L"), tmp_path / "grey.png"), 256, sources)
    assert "Grey image" in result["status"]
    assert result["original"].shape == (32, 32, 3)
    np.testing.assert_array_equal(result["original"], np.repeat(grey[..., None], 3, axis=2))
    assert result["vq"].shape == result["arcvq"].shape == (32, 32, 3)


def test_rgba_image_is_composited_on_white(client, sources, tmp_path):
    rgb = _photo_crop()
    alpha = np.zeros((32, 32), dtype=np.uint8)
    alpha[:, 16:] = 255
    path = _save(PIL.Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), tmp_path / "rgba.png")
    result = _call(client, path, 256, sources)
    assert "Transparency composited on white" in result["status"]
    np.testing.assert_array_equal(result["original"][:, :16], 255)
    np.testing.assert_array_equal(result["original"][:, 16:], rgb[:, 16:])
    assert result["arcvq"].shape == (32, 32, 3)


def test_palette_image(client, sources, tmp_path):
    palette_image = PIL.Image.fromarray(_photo_crop()).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=32)
    result = _call(client, _save(palette_image, tmp_path / "palette.png"), 256, sources)
    assert "Palette image converted to colour" in result["status"]
    np.testing.assert_array_equal(result["original"], np.asarray(palette_image.convert("RGB")))
    assert result["vq"].shape == (32, 32, 3)


def test_16_bit_image(client, sources, tmp_path):
    values = np.linspace(0, 65535, 32 * 24).reshape(24, 32).astype(np.uint16)
    path = _save(PIL.Image.fromarray(values), tmp_path / "deep.png")
    assert PIL.Image.open(path).mode.startswith("I")
    result = _call(client, path, 256, sources)
    assert "16-bit image scaled to 8 bits" in result["status"]
    expected = np.round(values.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    assert np.abs(result["original"][..., 0].astype(int) - expected).max() <= 1
    assert result["arcvq"].shape == (24, 32, 3)


def test_size_not_divisible_by_the_downsampling_factor(client, sources, tmp_path):
    rgb = skimage_data.astronaut()[100:121, 200:234]  # 34 wide, 21 high
    result = _call(client, _save(PIL.Image.fromarray(rgb), tmp_path / "odd.png"), 256, sources)
    assert "Centre-cropped 34x21 to 32x20" in result["status"]
    # crop starts at remainder // 2: 1 column, 0 rows
    np.testing.assert_array_equal(result["original"], rgb[0:20, 1:33])
    assert result["vq"].shape == result["arcvq"].shape == (20, 32, 3)


def test_missing_checkpoint_is_named(client, sources, tmp_path):
    photo = _save(PIL.Image.fromarray(_photo_crop()), tmp_path / "photo.png")
    missing = tmp_path / "no-such-checkpoint"
    result = _call(client, photo, 256, (str(missing), sources[1]))
    assert f"Checkpoint folder not found: {missing}" in result["status"]
    assert result["vq"] is None
    _assert_still_serving(client, tmp_path, sources)


def test_sixteen_concurrent_clients(server_url, client, sources, tmp_path):
    small = skimage_data.astronaut()[::16, ::16]  # 32x32
    photos = [_save(PIL.Image.fromarray(small[:, 2 * k :]), tmp_path / f"{k}.png") for k in range(4)]
    expected = [_call(client, photo, 32, sources) for photo in photos]

    def one_client(index: int) -> dict:
        return _call(Client(server_url, verbose=False), photos[index % 4], 32, sources)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one_client, range(16)))
    for index, result in enumerate(results):
        reference = expected[index % 4]
        assert result["record"] == reference["record"]
        for name in ("original", "vq", "arcvq", "vq_tokens", "arcvq_tokens"):
            np.testing.assert_array_equal(result[name], reference[name])


def test_jpeg_draft_decodes_a_large_jpeg_at_reduced_scale(tmp_path):
    path = tmp_path / "large.jpg"
    PIL.Image.fromarray(skimage_data.coffee()).resize((1200, 800)).save(path, quality=95)
    decoded = app.load_image(path, max_side=128, max_input_pixels=200_000)
    assert decoded.file_size == (1200, 800)
    assert decoded.target_size == (128, 85)
    assert decoded.image.size == (150, 100)  # decoded at 1/8 scale, still covering the target
    png_path = _save(PIL.Image.open(path), tmp_path / "large.png")
    with pytest.raises(app.InputImageError, match="1200x800 pixels"):
        app.load_image(png_path, max_side=128, max_input_pixels=200_000)


def test_startup_names_a_missing_checkpoint(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "arcvq-vae-photos"
    monkeypatch.setenv("ARCVQ_CHECKPOINT", str(missing))
    with pytest.raises(
        SystemExit, match=re.escape(f"Checkpoint folder not found: {missing}") + ".*ARCVQ_CHECKPOINT.*--preset arcvq"
    ):
        app.main()


def test_readme_command_serves_on_localhost(tmp_path):
    port = _free_port()
    environment = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(
        [sys.executable, str(APP_PATH)],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"space/app.py exited: {process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("space/app.py did not answer on 127.0.0.1 within 120 s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def _tiny_checkpoint(folder: Path, preset: str, num_channels: int) -> str:
    torch.manual_seed(0)
    config = ArcVQConfig.from_preset(
        preset, num_channels=num_channels, hidden_size=16, residual_hidden_size=8, codebook_size=16, codebook_dim=8
    )
    ArcVQModel(config).save_pretrained(folder)
    return str(folder)


def test_one_channel_checkpoints_and_mismatched_pairs(sources, tmp_path):
    grey_vq = app.load_checkpoint(_tiny_checkpoint(tmp_path / "grey-vq", "vq-baseline", 1))
    grey_arcvq = app.load_checkpoint(_tiny_checkpoint(tmp_path / "grey-arcvq", "arcvq", 1))
    photo = app.EXAMPLES_DIR / "chelsea.png"  # 256x170 colour
    result = app.reconstruct_comparison(photo, 128, {app.VQ_LABEL: grey_vq, app.ARCVQ_LABEL: grey_arcvq})
    assert "Colour image reduced to luma" in " ".join(result.notices)
    assert result.original.shape == (84, 128)  # 128x85 cropped to a multiple of 4
    for model in result.models:
        assert model.reconstruction.shape == (84, 128)
        assert model.token_map.shape == (84, 128, 3)
        assert model.image_tokens.shape == (21, 32)
        np.testing.assert_array_equal(model.code_counts, np.bincount(model.image_tokens.ravel(), minlength=16))
        psnr, ssim = _skimage_metrics(model.reconstruction, result.original)
        assert model.psnr == pytest.approx(psnr, abs=1e-6)
        assert model.ssim == pytest.approx(ssim, abs=1e-6)
    with pytest.raises(app.InputImageError, match="different numbers of channels"):
        app.reconstruct_comparison(
            photo, 128, {app.VQ_LABEL: grey_vq, app.ARCVQ_LABEL: app.load_checkpoint(sources[1])}
        )


def test_a_folder_that_is_not_an_arcvq_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "bert-like"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(app.CheckpointError, match="is a 'bert' checkpoint, not an ArcVQ one"):
        app.load_checkpoint(str(folder))


def test_loaded_checkpoints_are_bounded(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "MAX_LOADED_CHECKPOINTS", 2)
    folders = [_tiny_checkpoint(tmp_path / f"tiny-{index}", "arcvq", 3) for index in range(3)]
    loaded = [app.load_checkpoint(folder) for folder in folders]
    assert list(app._model_cache) == folders[1:]
    assert app.load_checkpoint(folders[2]) is loaded[2]
    assert app.load_checkpoint(folders[0]) is not loaded[0]  # evicted, loaded again


def test_an_offline_hub_id_gives_a_message():
    with pytest.raises(app.CheckpointError, match="Cannot read the checkpoint 'someone/arcvq-model' as a Hugging Face"):
        app.load_checkpoint("someone/arcvq-model")


def test_exif_orientation_is_applied(tmp_path):
    rgb = skimage_data.astronaut()[:32, :48]
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    PIL.Image.fromarray(rgb).save(path, exif=exif)
    decoded = app.load_image(path, max_side=256)
    assert decoded.target_size == (32, 48)
    np.testing.assert_array_equal(np.asarray(decoded.image), np.rot90(rgb, k=-1))
