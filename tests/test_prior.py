"""Tests of arcvq_hf.prior.language_model and arcvq_hf.prior.token_data: raster order, the vocabulary bijection,
constrained generation, token data sets, and that a tiny GPT-2 prior learns. Everything uses tiny random models;
nothing depends on shipped checkpoints."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments

import arcvq_hf.prior.token_data as prior_data_module
from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.prior.language_model import (
    ImageTokenLogitsProcessor,
    ImageTokenVocabulary,
    bits_per_token,
    from_raster_order,
    image_token_nll,
    prior_config,
    prior_settings,
    raster_order,
    sample_image_tokens,
)
from arcvq_hf.prior.token_data import ImageTokenCollator, encode_images, image_grid, tokenize_image_dataset
from arcvq_hf.utils.io_utils import save_image_atomic

CODEBOOK_SIZE = 32
LATENT_SHAPE = (3, 3)


def tiny_tokenizer(seed: int = 0) -> ArcVQModel:
    torch.manual_seed(seed)
    config = ArcVQConfig.from_preset(
        "arcvq", num_channels=1, hidden_size=16, residual_hidden_size=8, num_residual_layers=1,
        codebook_size=CODEBOOK_SIZE, codebook_dim=8,
    )  # fmt: skip
    return ArcVQModel(config).eval()


def tiny_prior(vocabulary: ImageTokenVocabulary, latent_shape=LATENT_SHAPE, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(prior_config(vocabulary, latent_shape, n_layer=1, n_embd=32, n_head=2)).eval()


def digit_like_images(count: int, seed: int = 0) -> tuple[list[PIL.Image.Image], list[int]]:
    """12x12 grey images whose content depends on a class label (a bright bar at a label-dependent row)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        label = index % 3
        array = rng.uniform(0, 40, size=(12, 12))
        array[2 + 3 * label : 4 + 3 * label, :] = 255
        images.append(PIL.Image.fromarray(array.astype(np.uint8), mode="L"))
        labels.append(label)
    return images, labels


# ----- raster order and the round trip through the vocabulary -------------------------------------------------


def test_raster_order_is_row_major_and_invertible():
    grid = torch.randint(0, 50, (2, 3, 5))
    sequence = raster_order(grid)
    for row in range(3):
        for column in range(5):
            assert torch.equal(sequence[:, row * 5 + column], grid[:, row, column])
    assert torch.equal(from_raster_order(sequence, (3, 5)), grid)
    with pytest.raises(ValueError, match="latent shape"):
        from_raster_order(sequence, (4, 4))
    with pytest.raises(ValueError, match="batch, h, w"):
        raster_order(sequence)


def test_tokens_through_vocabulary_decode_exactly_like_the_quantized_latents():
    model = tiny_tokenizer()
    pixel_values = torch.rand(3, 1, 12, 16) * 2 - 1
    vocabulary = ImageTokenVocabulary(CODEBOOK_SIZE, num_classes=10, offset=7)
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        ids = vocabulary.build_sequences(raster_order(encoded.image_tokens), labels=[4, 0, 9])
        labels, raster = vocabulary.split_sequences(ids)
        grid = from_raster_order(raster, encoded.image_tokens.shape[1:])
        from_ids = model.decode(grid)
        from_flat_ids = model.decode(raster, latent_shape=(3, 4))
        code_vectors = model.codebook[encoded.image_tokens].permute(0, 3, 1, 2).contiguous()
        from_codes = model.decode_latents(code_vectors)
        from_quantized = model.decode_latents(encoded.quantized_latents)
    assert labels.tolist() == [4, 0, 9]
    assert torch.equal(grid, encoded.image_tokens)
    assert torch.equal(from_ids, from_codes)
    assert torch.equal(from_flat_ids, from_codes)
    assert torch.equal(encoded.quantized_latents, code_vectors)
    assert torch.equal(from_ids, from_quantized)


# ----- the vocabulary ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codebook_size,num_classes,offset", [(37, 10, 5), (512, 0, 0), (1, 1, 0)])
def test_vocabulary_layout_partitions_ids_and_maps_bijectively(codebook_size, num_classes, offset):
    vocabulary = ImageTokenVocabulary(codebook_size, num_classes, offset)
    image_ids = set(vocabulary.image_token_range)
    class_ids = set(vocabulary.class_token_range)
    specials = {vocabulary.bos_token_id, vocabulary.pad_token_id}
    base_ids = set(range(offset))
    parts = [base_ids, image_ids, class_ids, specials]
    assert sum(len(part) for part in parts) == vocabulary.vocab_size == offset + codebook_size + num_classes + 2
    assert set().union(*parts) == set(range(vocabulary.vocab_size))

    codes = torch.arange(codebook_size)
    ids = vocabulary.image_tokens_to_ids(codes)
    assert len(set(ids.tolist())) == codebook_size and set(ids.tolist()) == image_ids
    assert torch.equal(vocabulary.ids_to_image_tokens(ids), codes)
    every_image_id = torch.tensor(sorted(image_ids))
    assert torch.equal(vocabulary.image_tokens_to_ids(vocabulary.ids_to_image_tokens(every_image_id)), every_image_id)
    if num_classes:
        class_token_ids = vocabulary.class_token_ids(torch.arange(num_classes))
        assert set(class_token_ids.tolist()) == class_ids
        assert torch.equal(vocabulary.class_token_ids_to_labels(class_token_ids), torch.arange(num_classes))
    assert ImageTokenVocabulary.from_dict(vocabulary.to_dict()) == vocabulary


def test_vocabulary_rejects_out_of_range_ids_clearly():
    vocabulary = ImageTokenVocabulary(codebook_size=16, num_classes=3, offset=4)
    with pytest.raises(ValueError, match=r"image tokens \(code ids\) must lie in \[0, 15\].*e\.g\. 16"):
        vocabulary.image_tokens_to_ids(torch.tensor([0, 16]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 15\].*e\.g\. -1"):
        vocabulary.image_tokens_to_ids(torch.tensor([-1, 3]))
    for not_an_image_id in (3, vocabulary.bos_token_id, vocabulary.class_token_range.start, vocabulary.pad_token_id):
        with pytest.raises(ValueError, match=r"image-token ids must lie in \[4, 19\]"):
            vocabulary.ids_to_image_tokens(torch.tensor([[5, not_an_image_id]]))
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 2\]"):
        vocabulary.class_token_ids([3])
    with pytest.raises(TypeError, match="integer tensor"):
        vocabulary.ids_to_image_tokens(torch.tensor([5.0]))
    with pytest.raises(ValueError, match="BOS positions"):
        vocabulary.split_sequences(torch.tensor([[5, vocabulary.class_token_range.start, 6]]))
    with pytest.raises(ValueError, match="needs `labels`"):
        vocabulary.build_sequences(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no class tokens"):
        ImageTokenVocabulary(16).build_sequences(torch.zeros(2, 4, dtype=torch.long), labels=[0, 1])
    with pytest.raises(ValueError, match="codebook_size must be an integer >= 1"):
        ImageTokenVocabulary(0)


# ----- constrained generation ---------------------------------------------------------------------------------


def test_logits_processor_keeps_allowed_scores_and_masks_the_rest():
    vocabulary = ImageTokenVocabulary(codebook_size=8, num_classes=2, offset=3)
    processor = ImageTokenLogitsProcessor(vocabulary, sequence_length=4)
    scores = torch.randn(5, vocabulary.vocab_size + 6)  # a model vocabulary larger than the layout
    expected_allowed = {
        0: [vocabulary.bos_token_id],
        1: list(vocabulary.class_token_range),
        2: list(vocabulary.image_token_range),
        5: list(vocabulary.image_token_range),
        6: [vocabulary.pad_token_id],
    }
    for position, allowed in expected_allowed.items():
        masked = processor(torch.zeros(5, position, dtype=torch.long), scores.clone())
        finite = torch.isfinite(masked).all(dim=0).nonzero().flatten().tolist()
        assert finite == allowed
        assert torch.equal(masked[:, allowed], scores[:, allowed])
        assert torch.isneginf(masked[:, [i for i in range(scores.shape[1]) if i not in allowed]]).all()
    with pytest.raises(ValueError, match="smaller than the image-token layout"):
        processor(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, vocabulary.vocab_size - 1))


@pytest.mark.parametrize("sampling", [{"temperature": 4.0}, {"temperature": 2.0, "top_k": 5, "top_p": 0.9}])
def test_generation_never_emits_an_out_of_range_image_token(sampling):
    # A random GPT-2 at a high temperature spreads its samples over the whole vocabulary, base-vocabulary ids
    # (offset 20), BOS, class and PAD included; only the processor keeps the image positions clean.
    vocabulary = ImageTokenVocabulary(codebook_size=CODEBOOK_SIZE, num_classes=10, offset=20)
    latent_shape = (4, 4)
    prior = tiny_prior(vocabulary, latent_shape)
    labels = torch.arange(10).repeat(8)
    prompts = vocabulary.prompt_ids(labels=labels)
    length = latent_shape[0] * latent_shape[1]
    generate_kwargs = {"do_sample": True, "max_new_tokens": length, "pad_token_id": vocabulary.pad_token_id}

    torch.manual_seed(0)
    unconstrained = prior.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), **generate_kwargs)
    image_ids = vocabulary.image_token_range
    unconstrained_image_part = unconstrained[:, 2:]
    outside = (unconstrained_image_part < image_ids.start) | (unconstrained_image_part >= image_ids.stop)
    assert outside.any(), "the check below is only meaningful if an unconstrained model leaves the image range"

    torch.manual_seed(0)
    constrained = prior.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        logits_processor=[ImageTokenLogitsProcessor(vocabulary, length)],
        **generate_kwargs,
        **sampling,
    )
    assert constrained.shape == (80, 2 + length)
    assert torch.equal(constrained[:, :2], prompts)
    image_part = constrained[:, 2:]
    assert ((image_part >= image_ids.start) & (image_part < image_ids.stop)).all()
    assert len(set(image_part.flatten().tolist())) > CODEBOOK_SIZE // 2  # the samples really vary

    sampled_labels, grids = sample_image_tokens(prior, labels=labels, seed=1, **sampling)
    assert torch.equal(sampled_labels, labels)
    assert grids.shape == (80, *latent_shape) and 0 <= int(grids.min()) and int(grids.max()) < CODEBOOK_SIZE


def test_sampling_is_reproducible_with_a_seed_and_decodes():
    vocabulary = ImageTokenVocabulary(codebook_size=CODEBOOK_SIZE, num_classes=3)
    prior = tiny_prior(vocabulary)
    _, first = sample_image_tokens(prior, labels=[0, 1, 2], seed=3, top_k=10)
    _, second = sample_image_tokens(prior, labels=[0, 1, 2], seed=3, top_k=10)
    assert torch.equal(first, second)
    pixels = tiny_tokenizer().decode(first)
    assert pixels.shape == (3, 1, 12, 12)
    unconditional = ImageTokenVocabulary(codebook_size=CODEBOOK_SIZE)
    labels, grids = sample_image_tokens(tiny_prior(unconditional), num_samples=2, seed=0)
    assert labels is None and grids.shape == (2, *LATENT_SHAPE)


# ----- likelihood --------------------------------------------------------------------------------------------


def test_image_token_nll_matches_a_position_by_position_computation():
    vocabulary = ImageTokenVocabulary(codebook_size=CODEBOOK_SIZE, num_classes=3, offset=2)
    prior = tiny_prior(vocabulary)
    grids = torch.randint(0, CODEBOOK_SIZE, (4, *LATENT_SHAPE))
    input_ids = vocabulary.build_sequences(grids, labels=[2, 0, 1, 1])
    nll = image_token_nll(prior, vocabulary, input_ids, batch_size=3)
    assert nll.shape == (4, 9)
    image_ids = vocabulary.image_token_range
    with torch.no_grad():
        for position in range(9):
            context = input_ids[:, : vocabulary.prefix_length + position]
            next_logits = prior(input_ids=context).logits[:, -1, image_ids.start : image_ids.stop]
            target = grids.reshape(4, -1)[:, position]
            expected = -torch.distributions.Categorical(logits=next_logits).log_prob(target)
            torch.testing.assert_close(nll[:, position], expected, rtol=1e-5, atol=1e-5)
    assert bits_per_token(nll) == pytest.approx(float(nll.double().mean()) / math.log(2))
    # An untrained prior is close to uniform over the image tokens: about log2(K) bits.
    assert bits_per_token(nll) == pytest.approx(math.log2(CODEBOOK_SIZE), abs=0.5)


# ----- token data sets ---------------------------------------------------------------------------------------


def test_tokenize_image_dataset_encodes_once_and_reuses_the_cache(tmp_path, monkeypatch):
    model = tiny_tokenizer()
    processor = ArcVQImageProcessor(num_channels=1)
    images, labels = digit_like_images(10)
    dataset = Dataset.from_dict({"image": images, "label": labels})
    tokens = tokenize_image_dataset(dataset, model, processor, cache_dir=tmp_path, batch_size=4)
    assert tokens.column_names == ["label", "image_tokens"]
    assert tokens["label"] == labels
    expected = encode_images(model, processor, images)
    assert torch.equal(torch.tensor(tokens["image_tokens"]), expected)
    cache_files = sorted(path.name for path in tmp_path.glob("image-tokens-*.arrow"))
    assert len(cache_files) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cached token data set was encoded again")

    monkeypatch.setattr(prior_data_module, "encode_images", no_encoding)
    again = tokenize_image_dataset(dataset, model, processor, cache_dir=tmp_path, batch_size=4)
    assert again["image_tokens"] == tokens["image_tokens"]
    # A different tokenizer gets its own cache file, so it is encoded (and here fails) rather than reused.
    with pytest.raises(AssertionError, match="encoded again"):
        tokenize_image_dataset(dataset, tiny_tokenizer(seed=1), processor, cache_dir=tmp_path, batch_size=4)


def test_encode_images_refuses_a_tokenizer_in_train_mode():
    model = tiny_tokenizer().train()
    with pytest.raises(ValueError, match="model.eval"):
        encode_images(model, ArcVQImageProcessor(num_channels=1), digit_like_images(1)[0])


def test_collator_builds_sequences_and_masks_the_prefix():
    vocabulary = ImageTokenVocabulary(codebook_size=CODEBOOK_SIZE, num_classes=3, offset=1)
    rows = [{"image_tokens": [0, 5, 31], "label": 2}, {"image_tokens": [7, 7, 1], "label": 0}]
    batch = ImageTokenCollator(vocabulary)(rows)
    bos, class0 = vocabulary.bos_token_id, vocabulary.class_token_range.start
    assert batch["input_ids"].tolist() == [[bos, class0 + 2, 1, 6, 32], [bos, class0, 8, 8, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 1, 6, 32], [-100, -100, 8, 8, 2]]


def test_prior_config_is_sized_to_the_layout_and_round_trips(tmp_path):
    vocabulary = ImageTokenVocabulary(codebook_size=512, num_classes=10)
    config = prior_config(vocabulary, (7, 7), tokenizer_name_or_path="checkpoints/arcvq-vae-mnist")
    assert config.vocab_size == 524 and config.n_positions == 51
    assert config.bos_token_id == vocabulary.bos_token_id and config.pad_token_id == vocabulary.pad_token_id
    config.save_pretrained(tmp_path)
    loaded = type(config).from_pretrained(tmp_path)
    assert prior_settings(loaded) == (vocabulary, (7, 7), "checkpoints/arcvq-vae-mnist")
    with pytest.raises(ValueError, match="image_prior"):
        prior_settings(type(config)())


# ----- training ----------------------------------------------------------------------------------------------


def test_a_tiny_prior_trains_and_its_loss_falls(tmp_path):
    model = tiny_tokenizer()
    processor = ArcVQImageProcessor(num_channels=1)
    images, labels = digit_like_images(48)
    tokens = tokenize_image_dataset(Dataset.from_dict({"image": images, "label": labels}), model, processor)
    vocabulary = ImageTokenVocabulary(codebook_size=CODEBOOK_SIZE, num_classes=3)
    prior = tiny_prior(vocabulary)
    collator = ImageTokenCollator(vocabulary)
    input_ids = collator(list(tokens))["input_ids"]
    before = bits_per_token(image_token_nll(prior, vocabulary, input_ids))
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(model=prior, args=arguments, train_dataset=tokens, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    after = bits_per_token(image_token_nll(prior, vocabulary, input_ids))
    assert losses[-1] < losses[0]
    assert after < before - 1.0


def test_image_grid_places_each_image_in_its_cell_and_saves_atomically(tmp_path):
    rows = [[PIL.Image.new("L", (4, 3), color=10 * (3 * r + c + 1)) for c in range(3)] for r in range(2)]
    grid = image_grid(rows, padding=1, scale=2)
    assert grid.size == (3 * (8 + 1) + 1, 2 * (6 + 1) + 1)
    array = np.asarray(grid)
    for r in range(2):
        for c in range(3):
            top, left = 1 + r * 7, 1 + c * 9
            assert (array[top : top + 6, left : left + 8] == 10 * (3 * r + c + 1)).all()
    assert (array[0] == 0).all() and (array[:, 0] == 0).all()
    with pytest.raises(ValueError, match="same size"):
        image_grid([[rows[0][0], PIL.Image.new("L", (5, 5))]])
    path = tmp_path / "grid.png"
    save_image_atomic(grid, path)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    assert np.array_equal(np.asarray(PIL.Image.open(path)), array)


def run_example(name: str, arguments: list[str], monkeypatch) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(path), *arguments])
    module.main()


def test_train_prior_and_generate_examples_end_to_end(tmp_path, monkeypatch):
    tokenizer_dir, data_dir, prior_dir = tmp_path / "tokenizer", tmp_path / "data", tmp_path / "prior"
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    ArcVQImageProcessor(num_channels=1).save_pretrained(tokenizer_dir)
    images, labels = digit_like_images(24)
    features = Features({"image": Image(), "label": ClassLabel(names=["top", "middle", "bottom"])})
    DatasetDict(
        train=Dataset.from_dict({"image": images[:18], "label": labels[:18]}, features=features),
        test=Dataset.from_dict({"image": images[18:], "label": labels[18:]}, features=features),
    ).save_to_disk(data_dir)
    run_example(
        "train_prior",
        ["--tokenizer", str(tokenizer_dir), "--dataset", str(data_dir), "--output_dir", str(prior_dir),
         "--cache_dir", str(tmp_path / "cache"), "--max_steps", "2", "--per_device_train_batch_size", "6",
         "--n_layer", "1", "--n_embd", "32", "--n_head", "2"],
        monkeypatch,
    )  # fmt: skip
    summary = json.loads((prior_dir / "prior_summary.json").read_text())
    assert summary["test_bits_per_token"] > 0 and summary["uniform_bits_per_token"] == math.log2(CODEBOOK_SIZE)
    prior = GPT2LMHeadModel.from_pretrained(prior_dir)
    assert prior_settings(prior.config) == (ImageTokenVocabulary(CODEBOOK_SIZE, 3), (3, 3), str(tokenizer_dir))
    assert len(list((tmp_path / "cache").glob("image-tokens-*.arrow"))) == 2

    output = tmp_path / "samples.png"
    run_example(
        "generate",
        ["--prior", str(prior_dir), "--output", str(output), "--samples_per_class", "4", "--scale", "1",
         "--top_k", "8", "--temperature", "0.8"],
        monkeypatch,
    )  # fmt: skip
    grid = PIL.Image.open(output)
    # one row per class, 4 samples per row, 12x12 images with 2-pixel gaps
    assert grid.size == (4 * (12 + 2) + 2, 3 * (12 + 2) + 2)


def test_generate_and_train_prior_refuse_wrong_folders_and_counts_clearly(tmp_path, monkeypatch, capsys):
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    ArcVQImageProcessor(num_channels=1).save_pretrained(tokenizer_dir)
    output = tmp_path / "samples.png"
    with pytest.raises(SystemExit):
        run_example("generate", ["--prior", str(tokenizer_dir), "--samples_per_class", "0"], monkeypatch)
    assert "--samples_per_class must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="is an ArcVQ tokenizer, not a prior.*--tokenizer"):
        run_example("generate", ["--prior", str(tokenizer_dir), "--output", str(output)], monkeypatch)
    with pytest.raises(FileNotFoundError, match="--prior .*no such local folder"):
        run_example("generate", ["--prior", str(tmp_path / "no-prior"), "--output", str(output)], monkeypatch)
    with pytest.raises(FileNotFoundError, match="--tokenizer .*no such local folder"):
        run_example("train_prior", ["--tokenizer", str(tmp_path / "no-tokenizer"), "--output_dir", str(tmp_path / "p")],
                    monkeypatch)  # fmt: skip
    assert not output.exists() and not (tmp_path / "p").exists()
