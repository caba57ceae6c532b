"""python -m arcvq_hf.evaluate: re-evaluating a saved folder writes exactly what ArcVQTrainer.evaluate reports."""

import json

import pytest
from tiny_training import digits, needs_perceptual_weights, save_digit_dataset, tiny_model, training_args

from arcvq_hf import ArcVQImageProcessor
from arcvq_hf.evaluate import main
from arcvq_hf.trainer import ArcVQTrainer
from arcvq_hf.transforms import pixel_values_transform

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
