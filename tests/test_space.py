"""The Gradio Space (space/*.py) served in-process and driven through gradio_client: a real photo, every kind of
bad input, 16 concurrent clients, the checkpoint policy, and what a Hugging Face Space needs (host from
GRADIO_SERVER_NAME, requirements.txt, README front matter). Numbers are checked against independent
recomputations (scikit-image)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import tomllib
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import psutil
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub.repocard import metadata_load
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.model.image_processing_arcvq import from_unit_range, to_unit_array

REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE_DIR = REPO_ROOT / "space"
APP_PATH = SPACE_DIR / "app.py"
# app.py imports its sibling modules by plain name, as `python space/app.py` and a Space run it.
sys.path.insert(0, str(SPACE_DIR))
app = importlib.import_module("app")
catalog_module = importlib.import_module("checkpoint_catalog")
comparison = importlib.import_module("comparison")
rendering = importlib.import_module("rendering")
uploads = importlib.import_module("uploads")

IMAGE_OUTPUTS = ("original", "vq", "arcvq", "vq_tokens", "arcvq_tokens", "usage")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_hosts(pid: int, port: int) -> set[str]:
    """The addresses process `pid` listens on at TCP `port` (from /proc/net/tcp, through psutil)."""
    return {
        connection.laddr.ip
        for connection in psutil.Process(pid).net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }


def _serve(demo: gr.Blocks) -> str:
    """Launch `demo` in this process through app.launch (the host rule `main` uses) on a free port; its URL."""
    port = _free_port()
    app.launch(demo, server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def server():
    demo = app.build_demo(concurrency_limit=8)
    url = _serve(demo)
    try:
        yield demo, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server_url(server):
    return server[1]


@pytest.fixture(scope="module")
def client(server_url):
    return Client(server_url, verbose=False)


@pytest.fixture(scope="module")
def sources():
    catalog = catalog_module.CheckpointCatalog.from_environment()
    return catalog.default(app.VQ_LABEL), catalog.default(app.ARCVQ_LABEL)


def _tiny_checkpoint(folder: Path, preset: str, num_channels: int) -> Path:
    torch.manual_seed(0)
    config = ArcVQConfig.from_preset(
        preset, num_channels=num_channels, hidden_size=16, residual_hidden_size=8, codebook_size=16, codebook_dim=8
    )
    ArcVQModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Small random checkpoints that are not in the catalog: 3-channel VQ / ArcVQ and 1-channel ones."""
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {
        "vq": _tiny_checkpoint(root / "vq", "vq-baseline", 3),
        "arcvq": _tiny_checkpoint(root / "arcvq", "arcvq", 3),
        "grey-vq": _tiny_checkpoint(root / "grey-vq", "vq-baseline", 1),
        "grey-arcvq": _tiny_checkpoint(root / "grey-arcvq", "arcvq", 1),
    }


def _call(client: Client, path: Path | str, max_side: int, sources: tuple[str, str]) -> dict:
    """One /reconstruct call; images come back as uint8 arrays read from the returned PNG files."""
    outputs = client.predict(handle_file(str(path)), max_side, *sources, api_name="/reconstruct")
    names = ["status", "original", "vq", "arcvq", "vq_tokens", "arcvq_tokens", "table", "usage", "record"]
    result = dict(zip(names, outputs, strict=True))
    for name in IMAGE_OUTPUTS:
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


def _lpips_available() -> bool:
    if importlib.util.find_spec("arcvq_hf.evaluation.perceptual") is None:
        return False
    from arcvq_hf.evaluation.perceptual import weights_available

    return weights_available("alex")


def _package_lpips(reconstruction: np.ndarray, original: np.ndarray) -> float:
    from arcvq_hf.evaluation.perceptual import lpips

    pair = [
        from_unit_range(torch.from_numpy(to_unit_array(x)).permute(2, 0, 1)[None]) for x in (reconstruction, original)
    ]
    return float(lpips(*pair, net="alex")[0])


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
    catalog = catalog_module.CheckpointCatalog.from_environment()
    for label, key, source in ((app.VQ_LABEL, "vq", sources[0]), (app.ARCVQ_LABEL, "arcvq", sources[1])):
        shown = record["models"][label]
        assert shown["checkpoint"] == source
        psnr, ssim = _skimage_metrics(result[key], result["original"])
        assert shown["psnr"] == pytest.approx(psnr, abs=1e-6)
        assert shown["ssim"] == pytest.approx(ssim, abs=1e-6)
        if _lpips_available():
            lpips = _package_lpips(result[key], result["original"])
            assert shown["lpips"] == pytest.approx(lpips, abs=1e-5)
            assert f"| {label} | {psnr:.2f} | {ssim:.4f} | {lpips:.4f} |" in result["table"]
        else:
            assert shown["lpips"] is None
            assert "LPIPS: n/a (run python -m arcvq_hf.evaluation.perceptual fetch)" in result["table"]
        # Token map: one colour per factor x factor block, as many colours as codes used.
        factor = catalog.load(source).downsampling_factor
        token_map = result[f"{key}_tokens"]
        blocks = token_map.reshape(168 // factor, factor, 256 // factor, factor, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()
        palette = rendering.token_palette(shown["codebook_size"])
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
    decoded = uploads.decode_upload(path, max_side=128, max_input_pixels=200_000)
    assert decoded.file_size == (1200, 800)
    assert decoded.target_size == (128, 85)
    assert decoded.image.size == (150, 100)  # decoded at 1/8 scale, still covering the target
    png_path = _save(PIL.Image.open(path), tmp_path / "large.png")
    with pytest.raises(uploads.InputImageError, match="1200x800 pixels"):
        uploads.decode_upload(png_path, max_side=128, max_input_pixels=200_000)


def test_exif_orientation_is_applied(tmp_path):
    rgb = skimage_data.astronaut()[:32, :48]
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    PIL.Image.fromarray(rgb).save(path, exif=exif)
    decoded = uploads.decode_upload(path, max_side=256)
    assert decoded.target_size == (32, 48)
    np.testing.assert_array_equal(np.asarray(decoded.image), np.rot90(rgb, k=-1))


def test_one_channel_checkpoints_and_mismatched_pairs(sources, tiny_checkpoints):
    grey_vq = catalog_module.load_checkpoint(str(tiny_checkpoints["grey-vq"]))
    grey_arcvq = catalog_module.load_checkpoint(str(tiny_checkpoints["grey-arcvq"]))
    photo = app.EXAMPLES_DIR / "chelsea.png"  # 256x170 colour
    result = comparison.reconstruct_comparison(photo, 128, {app.VQ_LABEL: grey_vq, app.ARCVQ_LABEL: grey_arcvq})
    assert "Colour image reduced to luma" in " ".join(result.notices)
    assert result.original.shape == (84, 128)  # 128x85 cropped to a multiple of 4
    for model in result.models:
        assert model.reconstruction.shape == (84, 128)
        assert model.image_tokens.shape == (21, 32)
        token_map = rendering.render_token_map(model.image_tokens, model.codebook_size, model.downsampling_factor)
        assert token_map.shape == (84, 128, 3)
        np.testing.assert_array_equal(model.code_counts, np.bincount(model.image_tokens.ravel(), minlength=16))
        psnr, ssim = _skimage_metrics(model.reconstruction, result.original)
        assert model.psnr == pytest.approx(psnr, abs=1e-6)
        assert model.ssim == pytest.approx(ssim, abs=1e-6)
    colour = catalog_module.load_checkpoint(str(tiny_checkpoints["arcvq"]))
    with pytest.raises(uploads.InputImageError, match="different numbers of channels"):
        comparison.reconstruct_comparison(photo, 128, {app.VQ_LABEL: grey_vq, app.ARCVQ_LABEL: colour})


def test_lpips_says_how_to_get_it_when_its_weights_are_missing(monkeypatch, tmp_path, tiny_checkpoints):
    # An empty weights folder: the perceptual module (when present) cannot find the LPIPS weights.
    monkeypatch.setenv("ARCVQ_PERCEPTUAL_CACHE", str(tmp_path))
    models = {
        label: catalog_module.load_checkpoint(str(tiny_checkpoints[key]))
        for label, key in ((app.VQ_LABEL, "vq"), (app.ARCVQ_LABEL, "arcvq"))
    }
    result = comparison.reconstruct_comparison(app.EXAMPLES_DIR / "chelsea.png", 64, models)
    assert [model.lpips for model in result.models] == [None, None]
    assert "LPIPS: n/a (run python -m arcvq_hf.evaluation.perceptual fetch)" in rendering.metrics_table(result)
    assert rendering.metrics_record(result)["models"][app.VQ_LABEL]["lpips"] is None


def test_a_folder_that_is_not_an_arcvq_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "bert-like"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(catalog_module.CheckpointError, match="is a 'bert' checkpoint, not an ArcVQ one"):
        catalog_module.load_checkpoint(str(folder))


def test_an_offline_hub_id_gives_a_message():
    with pytest.raises(
        catalog_module.CheckpointError, match="Cannot read the checkpoint 'someone/arcvq-model' as a Hugging Face"
    ):
        catalog_module.load_checkpoint("someone/arcvq-model")


# ----------------------------------------------------------------------------------------------------------------
# Which checkpoints may be loaded
# ----------------------------------------------------------------------------------------------------------------


def test_a_custom_checkpoint_is_refused_without_the_flag(client, sources, tiny_checkpoints, tmp_path, monkeypatch):
    custom = str(tiny_checkpoints["vq"])  # a valid checkpoint folder: refused all the same
    photo = _save(PIL.Image.fromarray(skimage_data.astronaut()[::16, ::16]), tmp_path / "photo.png")
    with pytest.raises(AppError, match="not in the list of choices"):
        _call(client, photo, 32, (custom, sources[1]))
    _assert_still_serving(client, tmp_path, sources)

    monkeypatch.delenv(catalog_module.ALLOW_CUSTOM_ENV_VAR, raising=False)
    catalog = catalog_module.CheckpointCatalog.from_environment()
    assert not catalog.allow_custom

    def forbidden(*args, **kwargs):
        raise AssertionError("a refused checkpoint must not be looked up")

    with monkeypatch.context() as patch:  # no file-system probe and no load for a refused name
        patch.setattr(os, "stat", forbidden)
        patch.setattr(catalog_module, "load_checkpoint", forbidden)
        for name in (custom, "someone/some-model", "/etc"):
            with pytest.raises(catalog_module.CheckpointRefusedError) as refusal:
                catalog.load(name)
            assert "is not offered here" in str(refusal.value)
            assert f"{catalog_module.ALLOW_CUSTOM_ENV_VAR}=1" in str(refusal.value)
    status = app.DemoHandlers(catalog).reconstruct(str(photo), 32, custom, sources[1])[0]
    assert "is not offered here" in status


def test_custom_checkpoints_are_accepted_with_the_flag(monkeypatch, tiny_checkpoints, tmp_path):
    monkeypatch.setenv(catalog_module.ALLOW_CUSTOM_ENV_VAR, "1")
    demo = app.build_demo()
    try:
        client = Client(_serve(demo), verbose=False)
        photo = _save(PIL.Image.fromarray(_photo_crop()), tmp_path / "photo.png")
        custom = (str(tiny_checkpoints["vq"]), str(tiny_checkpoints["arcvq"]))
        result = _call(client, photo, 256, custom)
        assert result["vq"].shape == result["arcvq"].shape == (32, 32, 3)
        assert [result["record"]["models"][label]["checkpoint"] for label in (app.VQ_LABEL, app.ARCVQ_LABEL)] == list(
            custom
        )
        missing = tmp_path / "no-such-checkpoint"
        result = _call(client, photo, 256, (str(missing), custom[1]))
        assert f"Checkpoint folder not found: {missing}" in result["status"]
        assert result["vq"] is None
    finally:
        demo.close()


def test_a_missing_shipped_checkpoint_is_named_and_the_demo_still_starts(monkeypatch, tmp_path, tiny_checkpoints):
    # Only vq-vae-photos is there: the default pair (photo tokenizer v2) and the other checkpoints are missing, offline.
    shutil.copytree(tiny_checkpoints["vq"], tmp_path / "vq-vae-photos")
    monkeypatch.setattr(catalog_module, "CHECKPOINT_DIRS", (tmp_path,))
    monkeypatch.setattr(catalog_module, "is_offline_mode", lambda: True)
    for variable in catalog_module.CHECKPOINT_ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    demo = app.build_demo()
    shown = " ".join(str(block.value) for block in demo.blocks.values() if isinstance(block, gr.Markdown))
    for name in ("field-vq-photos-v2", "arcvq-vae-photos-v2", "arcvq-vae-photos", "vq-vae-mnist", "arcvq-vae-mnist"):
        assert f"Checkpoint arcvq-hf/{name} is missing: no folder {tmp_path / name}" in shown
    assert "Checkpoint arcvq-hf/vq-vae-photos" not in shown
    dropdown = next(block for block in demo.blocks.values() if isinstance(block, gr.Dropdown))
    assert ("arcvq-hf/vq-vae-mnist (unavailable)", "arcvq-hf/vq-vae-mnist") in dropdown.choices
    assert ("arcvq-hf/vq-vae-photos", "arcvq-hf/vq-vae-photos") in dropdown.choices
    status = app.DemoHandlers(catalog_module.CheckpointCatalog.from_environment()).reconstruct(
        str(app.EXAMPLES_DIR / "chelsea.png"), 64, "arcvq-hf/vq-vae-photos", "arcvq-hf/arcvq-vae-photos-v2"
    )[0]
    assert "Checkpoint arcvq-hf/arcvq-vae-photos-v2 is missing" in status
    # the command that rebuilds it, with the codebook size the preset does not carry
    assert "--preset arcvq-lowdim --codebook_size 1024 --output_dir checkpoints/arcvq-vae-photos-v2" in status


def test_startup_names_a_missing_operator_checkpoint(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "arcvq-vae-photos"
    monkeypatch.setenv("ARCVQ_CHECKPOINT", str(missing))
    expected = re.escape(f"Checkpoint folder not found: {missing}") + ".*ARCVQ_CHECKPOINT.*--preset arcvq-lowdim "
    with pytest.raises(SystemExit, match=expected):
        app.main()


def test_loaded_checkpoints_are_bounded(tmp_path, tiny_checkpoints):
    bound = catalog_module.MAX_LOADED_CHECKPOINTS
    folders = [str(shutil.copytree(tiny_checkpoints["vq"], tmp_path / f"copy-{index}")) for index in range(bound + 1)]
    loaded = [catalog_module.load_checkpoint(folder) for folder in folders]
    assert catalog_module.load_checkpoint(folders[-1]) is loaded[-1]
    assert catalog_module.load_checkpoint(folders[0]) is not loaded[0]  # evicted, loaded again


# ----------------------------------------------------------------------------------------------------------------
# Deploying as a Hugging Face Space
# ----------------------------------------------------------------------------------------------------------------


def test_host_is_loopback_when_gradio_server_name_is_unset(server):
    demo, url = server
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    expected = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")  # app.launch leaves the host to that variable
    assert demo.server_name == expected
    assert _listening_hosts(os.getpid(), port) == {expected}


def test_readme_command_serves_on_the_host_from_gradio_server_name(tmp_path):
    # What a Space does: GRADIO_SERVER_NAME=0.0.0.0 in the environment of `python app.py`.
    port = _free_port()
    environment = {
        **os.environ,
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
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
            try:  # only loopback traffic: the server listens on every interface, the test talks to 127.0.0.1
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("space/app.py did not answer on 127.0.0.1 within 120 s")
        assert _listening_hosts(process.pid, port) == {"0.0.0.0"}
    finally:
        process.terminate()
        process.wait(timeout=30)


def _third_party_imports() -> set[str]:
    """Top-level names imported by space/*.py, less the standard library and the Space's own modules."""
    own = {path.stem for path in SPACE_DIR.glob("*.py")}
    names = set()
    for path in SPACE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in own}


def _required_distributions() -> set[str]:
    """Distribution names in space/requirements.txt; a local path (pip reads it from the working directory, the
    repository root) is named by its pyproject.toml."""
    required = set()
    for line in (SPACE_DIR / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith((".", "/")):
            project = tomllib.loads((REPO_ROOT / line / "pyproject.toml").read_text())["project"]
            required.add(canonicalize_name(project["name"]))
        else:
            required.add(canonicalize_name(Requirement(line).name))
    return required


def test_requirements_install_exactly_what_the_app_imports():
    # Rule: every third-party package space/*.py imports, except gradio, which the Space SDK installs at the
    # front matter's sdk_version (test below); the package itself comes from the project folder.
    distributions = importlib.metadata.packages_distributions()
    imported = {canonicalize_name(distributions[name][0]) for name in _third_party_imports()} - {"gradio"}
    assert _required_distributions() == imported
    assert {"scikit-image", "mlxtend", "datasets", "gradio"}.isdisjoint(_required_distributions())


def test_space_readme_front_matter():
    metadata = metadata_load(SPACE_DIR / "README.md")
    assert metadata["sdk"] == "gradio"
    assert metadata["sdk_version"] == gr.__version__
    assert metadata["python_version"] == "3.11"
    assert (SPACE_DIR / metadata["app_file"]).is_file() and metadata["app_file"] == "app.py"
    assert metadata["title"] and metadata["license"]
    assert 0 < len(metadata["short_description"]) <= 60  # the Hub's limit
    shipped = catalog_module.CheckpointCatalog(allow_custom=False, operator_choices={})
    assert metadata["models"] == shipped.offered()
