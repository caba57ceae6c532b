"""pipeline("image-tokenization") gives the same tokens and reconstruction as the model and processor by hand."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import pipeline

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel, ImageTokenizationPipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tokenizer")
    ArcVQModel(ArcVQConfig(hidden_size=32, residual_hidden_size=8, codebook_size=64, codebook_dim=8)).save_pretrained(
        folder
    )
    ArcVQImageProcessor().save_pretrained(folder)
    return folder


def photo(seed: int = 0, size: tuple[int, int] = (40, 32)) -> PIL.Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def test_tokens_and_reconstruction_equal_the_model_by_hand(folder, tmp_path):
    tokenizer = pipeline("image-tokenization", model=str(folder), trust_remote_code=False)
    assert isinstance(tokenizer, ImageTokenizationPipeline)
    model = ArcVQModel.from_pretrained(folder).eval()
    processor = ArcVQImageProcessor.from_pretrained(folder)
    image = photo()
    path = tmp_path / "photo.png"
    image.save(path)
    with torch.no_grad():
        tokens = model.encode(processor(image).pixel_values).image_tokens
        expected = processor.postprocess(model.decode(tokens))[0]
    for source in (image, str(path)):
        result = tokenizer(source)
        assert result["image_tokens"].dtype == torch.long and result["image_tokens"].shape == (8, 10)
        assert torch.equal(result["image_tokens"], tokens[0])
        assert np.array_equal(np.asarray(result["reconstruction"]), np.asarray(expected))


def test_a_list_gives_one_result_per_image_and_options_pass_through(folder):
    tokenizer = pipeline("image-tokenization", model=str(folder), trust_remote_code=False)
    results = tokenizer([photo(1), photo(2, (64, 64))], return_reconstruction=False)
    assert [tuple(r["image_tokens"].shape) for r in results] == [(8, 10), (16, 16)]
    assert all("reconstruction" not in r for r in results)
    small = tokenizer(photo(3, (64, 64)), image_processor_kwargs={"max_side": 32})
    assert small["image_tokens"].shape == (8, 8) and small["reconstruction"].size == (32, 32)
    with pytest.raises(TypeError, match="Unknown arguments"):
        tokenizer(photo(), top_k=3)
