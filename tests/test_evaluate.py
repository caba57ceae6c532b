"""python -m arcvq_hf.evaluation: re-evaluating a saved folder writes exactly what ArcVQTrainer.evaluate reports."""

import json

import pytest
from tiny_training import digits, needs_perceptual_weights, save_digit_dataset, tiny_model, training_args

from arcvq_hf import ArcVQImageProcessor
from arcvq_hf.data.transforms import pixel_values_transform
from arcvq_hf.evaluation.command import main
from arcvq_hf.training.trainer import ArcVQTrainer

SPEED_KEYS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
PERCEPTUAL_KEYS = ("eval_lpips", "eval_lpips_resize", "eval_rfid", "eval_rfid_num_images")


@pytest.fixture()
def saved_folder(tmp_path):
    folder = tmp_path / "model"
    model = tiny_model()
    model.set_training_step(7)
    model.save_pretrained(folder)
    ArcVQImageProcessor(num_channels=1).save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"epoch": 2.5, "global_step": 7}))
    (folder / "all_results.json").write_text(json.dumps({"train_loss": 1.25, "eval_psnr": -1.0}))
    return folder


@needs_perceptual_weights()
def test_reevaluating_a_folder_writes_the_keys_and_values_of_trainer_evaluate(tmp_path, saved_folder) -> None:
    data = tmp_path / "digits"
    save_digit_dataset(data)  # its test split: digits(11, offset=200)
    arguments = [str(saved_folder), "--dataset", str(data), "--perceptual", "--max_eval_samples", "3"]
    main([*arguments, "--batch_size", "2", "--device", "cpu"])
    written = json.loads((saved_folder / "eval_results.json").read_text())

    processor = ArcVQImageProcessor.from_pretrained(saved_folder)
    trainer = ArcVQTrainer(
        model=tiny_model(),
        args=training_args(tmp_path / "trainer", per_device_eval_batch_size=2),
        eval_dataset=digits(3, offset=200).with_transform(pixel_values_transform(processor)),
        processing_class=processor,
    )
    trainer.model.set_training_step(7)
    # Without the perceptual metrics (their values are the same loop's, tests/test_trainer.py; each rFID is slow).
    expected = trainer.evaluate()
    assert written.keys() == {*expected, *PERCEPTUAL_KEYS}
    # Trainer.log adds its state's epoch: for the folder, the one in its trainer_state.json.
    assert written["epoch"] == 2.5
    for key, value in expected.items():
        if key not in (*SPEED_KEYS, "epoch"):
            assert written[key] == pytest.approx(value, rel=1e-5), key
    assert written["eval_rfid_num_images"] == 3 and written["eval_schedule_step"] == 7
    combined = json.loads((saved_folder / "all_results.json").read_text())
    assert combined["train_loss"] == 1.25 and combined["eval_psnr"] == written["eval_psnr"]  # merged, as Trainer does
    assert not [path.name for path in saved_folder.iterdir() if path.name.startswith(".")]  # no staging files left


def test_a_missing_folder_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-model: no such local folder"):
        main([str(tmp_path / "no-such-model"), "--dataset", "mnist-5k"])


def _saved_photo_folder_and_corpus(tmp_path):
    """A tiny 3-channel model and a whole-photo corpus (train / test) saved with save_to_disk."""
    import numpy as np
    import PIL.Image
    from datasets import Dataset, DatasetDict
    from datasets import Image as ImageFeature

    rng = np.random.RandomState(1)

    def photos(sizes: list[tuple[int, int]]) -> Dataset:
        images = [PIL.Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
        return Dataset.from_dict({"image": images}).cast_column("image", ImageFeature())

    corpus = DatasetDict(train=photos([(40, 40)]), test=photos([(48, 64), (60, 44)]))
    corpus.save_to_disk(tmp_path / "corpus")
    folder = tmp_path / "model"
    tiny_model(num_channels=3).save_pretrained(folder)
    ArcVQImageProcessor(num_channels=3, size_divisor=4).save_pretrained(folder)
    return folder, corpus


def _mean_psnr(folder, images, **processor_overrides) -> float:
    import torch

    from arcvq_hf import ArcVQModel
    from arcvq_hf.evaluation.image_metrics import psnr

    model = ArcVQModel.from_pretrained(folder).eval()
    processor = ArcVQImageProcessor.from_pretrained(folder)
    values = []
    for image in images:
        pixels = processor(image, return_tensors="pt", **processor_overrides)["pixel_values"]
        with torch.no_grad():
            reconstruction = model(pixels).reconstruction
        values.append(psnr(processor.to_unit_range(reconstruction), processor.to_unit_range(pixels)).item())
    return sum(values) / len(values)


def test_crop_size_measures_the_fixed_crops_of_whole_photos(tmp_path) -> None:
    from arcvq_hf.data.photo_corpus import photo_eval_dataset

    folder, corpus = _saved_photo_folder_and_corpus(tmp_path)
    output = tmp_path / "crops.json"
    main([str(folder), "--dataset", str(tmp_path / "corpus"), "--crop_size", "16", "--output", str(output)])
    written = json.loads(output.read_text())
    crops = photo_eval_dataset(corpus["test"], 16)["image"]
    assert written["eval_num_images"] == len(crops) > 2
    assert written["eval_psnr"] == pytest.approx(_mean_psnr(folder, crops), rel=1e-6)
    assert not (folder / "eval_results.json").exists()  # --output writes there instead


def test_crop_grid_places_more_crops_for_counting_codebook_use(tmp_path) -> None:
    from arcvq_hf.data.photo_corpus import photo_eval_dataset

    folder, corpus = _saved_photo_folder_and_corpus(tmp_path)
    output = tmp_path / "dense.json"
    arguments = ["--dataset", str(tmp_path / "corpus"), "--crop_size", "16", "--crop_grid", "5"]
    main([str(folder), *arguments, "--output", str(output)])
    written = json.loads(output.read_text())
    dense, default = photo_eval_dataset(corpus["test"], 16, grid=5)["image"], photo_eval_dataset(corpus["test"], 16)
    assert written["eval_num_images"] == len(dense) > len(default)
    assert written["eval_psnr"] == pytest.approx(_mean_psnr(folder, dense), rel=1e-6)
    with pytest.raises(ValueError, match="crop_grid=0"):
        main([str(folder), *arguments[:-1], "0"])
    with pytest.raises(ValueError, match="give crop_size too"):
        main([str(folder), "--dataset", "mnist-5k", "--crop_grid", "5"])


def test_max_side_measures_whole_photos_downscaled_as_the_space_does(tmp_path) -> None:
    folder, corpus = _saved_photo_folder_and_corpus(tmp_path)
    output = tmp_path / "whole.json"
    main([str(folder), "--dataset", str(tmp_path / "corpus"), "--max_side", "32", "--output", str(output)])
    written = json.loads(output.read_text())
    photos = corpus["test"]["image"]
    assert written["eval_num_images"] == len(photos) == 2  # one per batch: the two photos differ in size
    assert written["eval_psnr"] == pytest.approx(_mean_psnr(folder, photos, max_side=32), rel=1e-6)


def test_crop_size_and_max_side_exclude_each_other(tmp_path) -> None:
    folder, _ = _saved_photo_folder_and_corpus(tmp_path)
    with pytest.raises(ValueError, match="exclude each other"):
        main([str(folder), "--dataset", str(tmp_path / "corpus"), "--crop_size", "16", "--max_side", "32"])
