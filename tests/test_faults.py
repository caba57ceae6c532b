"""Bad input and interrupted work fail loudly, name the input and the fix, and lose nothing (issue 23).

One test (or parametrized case) per case of the issue; the kill-at-random-points tests are in
tests/test_fault_injection.py. URLs are served by a local http.server on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import io
import socket
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import pipeline

import arcvq_hf.model.image_processing_arcvq as processing_module
import arcvq_hf.model.pipeline_arcvq as pipeline_module
from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny saved tokenizer (model + processor + remote-code files and auto_map, as save_pretrained writes)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tokenizer")
    model = ArcVQModel(ArcVQConfig(hidden_size=16, residual_hidden_size=8, codebook_size=32, codebook_dim=8))
    model.save_pretrained(folder)
    ArcVQImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(folder):
    return pipeline("image-tokenization", model=str(folder), trust_remote_code=False)


def by_hand(folder: Path, image: PIL.Image.Image) -> torch.Tensor:
    model = ArcVQModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model.encode(ArcVQImageProcessor.from_pretrained(folder)(image).pixel_values).image_tokens[0]


# ----- the pipeline reads images the way the processor does ---------------------------------------------------
def test_pipeline_keeps_16_bit_png_and_alpha_compositing(folder, tokenizer, tmp_path):
    ramp = (np.linspace(0, 65535, 16 * 24).reshape(16, 24)).astype(np.uint16)
    deep = PIL.Image.frombytes("I;16", (24, 16), ramp.tobytes())
    rgba = np.random.RandomState(0).randint(0, 256, (16, 24, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(24) < 12, 0, 255)[None, :]
    for name, image in (("deep.png", deep), ("alpha.png", PIL.Image.fromarray(rgba, mode="RGBA"))):
        image.save(tmp_path / name)
        expected = by_hand(folder, PIL.Image.open(tmp_path / name))
        assert torch.equal(tokenizer(str(tmp_path / name))["image_tokens"], expected), name


def test_pipeline_without_trust_remote_code_never_prompts(folder, monkeypatch):
    def no_prompt(*args, **kwargs):
        raise AssertionError("the pipeline asked on stdin whether to run custom code")

    monkeypatch.setattr("builtins.input", no_prompt)
    assert pipeline("image-tokenization", model=str(folder))(PIL.Image.new("RGB", (8, 8)))["image_tokens"].shape == (
        2,
        2,
    )


# ----- URLs: a local server only --------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    png = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/photo.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            self.wfile.write(self.png)
        else:
            self.send_error(404, "Not Found")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    _Handler.png = buffer.getvalue()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_pipeline_url_that_answers_404_names_the_url(tokenizer, server):
    assert tokenizer(f"{server}/photo.png")["image_tokens"].shape == (2, 2)
    with pytest.raises(ValueError, match=r"Could not fetch the image http://127\.0\.0\.1:\d+/missing\.png.*HTTP 404"):
        tokenizer(f"{server}/missing.png")


def test_pipeline_url_with_connection_refused_names_the_url(tokenizer):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"Could not connect to fetch the image http://127\.0\.0\.1:{port}/x"):
        tokenizer(f"http://127.0.0.1:{port}/x.png")


def test_pipeline_url_that_never_answers_times_out_by_default(tokenizer, monkeypatch):
    monkeypatch.setattr(pipeline_module, "DEFAULT_TIMEOUT", 0.5)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/photo.png"
        with pytest.raises(TimeoutError, match=r"got no answer within 0\.5 s"):
            tokenizer(url)
        with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
            tokenizer(url, timeout=0.2)


# ----- raw errors -> messages that name the input and the fix ---------------------------------------------------
def test_pipeline_empty_list_none_missing_path_and_folder(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="No images given"):
        tokenizer([])
    with pytest.raises(TypeError, match="No images given"):
        tokenizer(None)
    with pytest.raises(FileNotFoundError, match=r"No image file at 'nope/photo\.png'"):
        tokenizer("nope/photo.png")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        tokenizer(str(tmp_path))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png \(12 bytes\) is not an image file"):
        tokenizer(str(tmp_path / "notes.png"))


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_image_file_names_the_file(tokenizer, tmp_path, suffix):
    path = tmp_path / f"cut.{suffix}"
    pixels = np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"cut\.{suffix}.*truncated or corrupt"):
        ArcVQImageProcessor()(PIL.Image.open(path))
    with pytest.raises(ValueError, match=rf"cut\.{suffix}.*truncated or corrupt"):
        tokenizer(str(path))


def test_processor_none_and_strings_are_refused_clearly():
    with pytest.raises(TypeError, match=r"No images given \(None\)"):
        ArcVQImageProcessor()(None)
    with pytest.raises(TypeError, match="got None"):
        ArcVQImageProcessor()([None])
    with pytest.raises(TypeError, match=r"PIL\.Image\.open\(path\)"):
        ArcVQImageProcessor()("photo.png")


# ----- the processor's declared options ---------------------------------------------------------------------------
def test_processor_options_are_declared_and_unknown_overrides_are_refused():
    processor = ArcVQImageProcessor()
    assert set(processor.valid_kwargs.__annotations__) == {
        "num_channels", "do_resize", "size", "max_side", "max_pixels", "resample", "size_divisor", "divisor_mode",
        "image_mean", "image_std",
    }  # fmt: skip
    # Attributes that are not options (e.g. set by transformers) are not overridable per call.
    with pytest.raises(TypeError, match=r"Unknown preprocess arguments \['_processor_class'\].*accepts"):
        processor(np.zeros((4, 4, 3), np.uint8), _processor_class="x")
    with pytest.raises(TypeError, match=r"Unknown preprocess arguments \['maxside'\]"):
        processor.output_size(8, 8, maxside=4)


# ----- memory: huge images are refused or reduced before the full decode -----------------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height but which holds only a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def test_a_9000px_png_is_refused_from_its_header_by_the_pipeline(tokenizer, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_claiming(9000, 9000))
    # Decoding it would fail ("truncated"); the refusal must come first, from the header alone.
    with pytest.raises(ValueError, match=r"huge\.png: The image is 9000x9000 pixels .* max_pixels"):
        tokenizer(str(path))


def test_max_side_reduces_before_the_float_conversion(monkeypatch, tmp_path):
    decoded: list[tuple[int, int]] = []
    original = processing_module.to_unit_array

    def recording(image):
        decoded.append(image.size if isinstance(image, PIL.Image.Image) else image.shape[:2])
        return original(image)

    monkeypatch.setattr(processing_module, "to_unit_array", recording)
    ramp = np.add.outer(np.arange(2048), np.arange(2048)) % 256
    big = PIL.Image.fromarray(ramp.astype(np.uint8), mode="L")
    processor = ArcVQImageProcessor(num_channels=1)
    reduced = processor(big, max_side=256).pixel_values
    assert reduced.shape == (1, 1, 256, 256) and max(decoded[-1]) < 512
    assert big.size == (2048, 2048)
    path = tmp_path / "big.jpg"
    PIL.Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8)).save(path, quality=90)
    opened = PIL.Image.open(path)
    assert processor(opened, max_side=256).pixel_values.shape == (1, 1, 256, 256)
    assert max(decoded[-1]) <= 512 and opened.size == (2048, 2048)  # decoded at 1/4 scale; caller's image untouched


# ----- loading: nothing silently different from what was saved -----------------------------------------------------
def _copy_folder(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def _edit_config(folder: Path, **changes) -> None:
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


_DROP = object()


def test_folder_without_config_json_is_refused(folder, tmp_path):
    copy = _copy_folder(folder, tmp_path / "copy")
    (copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json does not exist.*cannot be guessed.*Copy the config"):
        ArcVQModel.from_pretrained(copy)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"use_ball_bound": "no"}, ValueError, r"use_ball_bound must be true or false .*got 'no'"),
        ({"use_arc_margin": 1}, ValueError, r"use_arc_margin must be true or false"),
        ({"data_variance": "x"}, ValueError, r"data_variance must be a number > 0, got 'x'"),
        ({"model_type": _DROP}, ValueError, r"no \"model_type\" entry.*add \"model_type\": \"arcvq\""),
    ],
)
def test_bad_config_values_are_refused_with_the_fix(folder, tmp_path, changes, error, message):
    copy = _copy_folder(folder, tmp_path / "copy")
    _edit_config(copy, **changes)
    with pytest.raises(error, match=message):
        ArcVQModel.from_pretrained(copy)


def test_nan_weights_are_refused_when_loaded_and_when_converted(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    from arcvq_hf.interop.convert_vqvae_checkpoint import convert_vqvae_checkpoint

    copy = _copy_folder(folder, tmp_path / "copy")
    weights = load_file(copy / "model.safetensors")
    weights["quantizer.embedding.weight"][0, 0] = float("nan")
    save_file(weights, copy / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors holds NaN .*quantizer\.embedding\.weight"):
        ArcVQModel.from_pretrained(copy)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipeline("image-tokenization", model=str(copy), trust_remote_code=False)
    source = tmp_path / "best.pt"
    torch.save({"_vq_vae.embedding.weight": torch.full((4, 2), float("nan"))}, source)
    with pytest.raises(ValueError, match=r"best\.pt holds NaN .*_vq_vae\.embedding\.weight"):
        convert_vqvae_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----- converters: --overwrite never deletes what is not a model output ---------------------------------------------
def _authors_checkpoint(path: Path) -> Path:
    from test_convert import authors_vqvae_state_dict

    torch.save(authors_vqvae_state_dict(), path)
    return path


def test_convert_overwrite_refuses_a_folder_that_is_not_a_model_output(tmp_path):
    from arcvq_hf.interop.convert_vqvae_checkpoint import main as vqvae_main

    work = tmp_path / "work"
    work.mkdir()
    source = _authors_checkpoint(work / "best.pt")
    (work / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        vqvae_main([str(source), str(work), "--overwrite"])
    assert exit_info.value.code == 1
    assert source.is_file() and (work / "notes.txt").read_text() == "keep me"
    # A saved model folder that holds the input is refused too; one that does not is replaced.
    model_dir = tmp_path / "model"
    vqvae_main([str(source), str(model_dir)])
    inside = _authors_checkpoint(model_dir / "best.pt")
    with pytest.raises(FileExistsError, match=r"holds the input .*best\.pt"):
        from arcvq_hf.interop.convert_vqvae_checkpoint import convert_vqvae_checkpoint

        convert_vqvae_checkpoint(inside, model_dir, overwrite=True)
    assert inside.is_file()
    inside.unlink()
    vqvae_main([str(source), str(model_dir), "--overwrite"])
    assert (model_dir / "model.safetensors").is_file()


def test_convert_overwrite_message_names_the_folder_and_the_fix(tmp_path, capsys):
    from arcvq_hf.interop.convert_vqvae_checkpoint import main as vqvae_main

    source = _authors_checkpoint(tmp_path / "best.pt")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.png").write_bytes(b"x")
    with pytest.raises(SystemExit):
        vqvae_main([str(source), str(other), "--overwrite"])
    assert "not a saved model folder (no config.json)" in capsys.readouterr().err


def test_convert_output_under_a_file_names_the_file(tmp_path, capsys):
    from arcvq_hf.interop.convert_vqvae_checkpoint import main as vqvae_main

    source = _authors_checkpoint(tmp_path / "best.pt")
    with pytest.raises(SystemExit):
        vqvae_main([str(source), str(tmp_path / "best.pt" / "out")])
    assert f"Cannot create the output folder {tmp_path / 'best.pt' / 'out'}: {source} is a file" in (
        capsys.readouterr().err
    )


# ----- training: the trained model is never lost, nothing is overwritten silently ------------------------------------


def _train_arguments(dataset, output_dir, *extra: str) -> list[str]:
    return [
        "--dataset", str(dataset), "--output_dir", str(output_dir), "--hidden_size", "16", "--codebook_size", "32",
        "--codebook_dim", "8", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "5", "--use_cpu", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image_size", "8"], r"--image_size 8: the evaluation's SSIM needs images of at least 11x11"),
        (["--image_size", "0"], r"--image_size 0: .*11 or more"),
        (["--max_eval_samples", "0"], r"--max_eval_samples 0 leaves nothing to evaluate"),
        (["--config_overrides", "{bad"], r"--config_overrides '\{bad' is not valid JSON"),
    ],
)
def test_bad_training_arguments_are_refused_before_training(example, digit_data, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        example.main(_train_arguments(digit_data, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file_is_named(example, digit_data, tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--output_dir .*run is an existing file"):
        example.main(_train_arguments(digit_data, tmp_path / "run"))


def test_dataset_that_is_neither_local_nor_on_the_hub_is_named(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--dataset 'data/nope' could not be loaded: not a local folder"):
        example.main(_train_arguments("data/nope", tmp_path / "run"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"--dataset '.*empty' .*(no images|could not be loaded)"):
        example.main(_train_arguments(tmp_path / "empty", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_model_is_saved_before_the_evaluation_and_never_overwritten_silently(
    example, digit_data, tmp_path, monkeypatch
):
    from arcvq_hf.training.trainer import ArcVQTrainer

    def failing_evaluate(self, *args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(ArcVQTrainer, "evaluate", failing_evaluate)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        example.main(_train_arguments(digit_data, tmp_path / "run"))
    assert ArcVQModel.from_pretrained(tmp_path / "run").config.codebook_size == 32  # the trained model survived
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match=r"already holds a trained model .*--overwrite_output_dir"):
        example.main(_train_arguments(digit_data, tmp_path / "run"))
    example.main(_train_arguments(digit_data, tmp_path / "run", "--overwrite_output_dir", "true"))
    assert not any(path.name.startswith(".") for path in (tmp_path / "run").iterdir())


def test_resume_refuses_a_checkpoint_without_the_codebook(tmp_path):
    from safetensors.torch import load_file, save_file
    from tiny_training import digits, tiny_model, training_args

    from arcvq_hf.training.trainer import ArcVQTrainer

    args = training_args(tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=1)
    ArcVQTrainer(model=tiny_model(), args=args, train_dataset=_pixels(digits(16))).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    weights = load_file(checkpoint / "model.safetensors")
    weights.pop("quantizer.embedding.weight")
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    trainer = ArcVQTrainer(model=tiny_model(), args=training_args(tmp_path / "run", max_steps=3),
                           train_dataset=_pixels(digits(16)))  # fmt: skip
    with pytest.raises(
        ValueError, match=r"checkpoint-2: .*missing: \['quantizer\.embedding\.weight'\].*random codebook"
    ):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"holds no model\.safetensors, so it is incomplete"):
        trainer.train(resume_from_checkpoint=True)


def _pixels(dataset):
    from arcvq_hf.data.transforms import pixel_values_transform

    return dataset.with_transform(pixel_values_transform(ArcVQImageProcessor(num_channels=1)))


def test_train_prior_with_max_steps_0_is_refused_and_writes_nothing(tmp_path):
    from example_scripts import load_example

    prior = load_example("train_prior")
    with pytest.raises(ValueError, match=r"--max_steps 0 trains nothing"):
        prior.main(["--tokenizer", "checkpoints/vq-vae-mnist", "--output_dir", str(tmp_path / "prior"),
                    "--max_steps", "0"])  # fmt: skip
    assert not (tmp_path / "prior").exists()
