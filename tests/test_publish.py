"""Publishing uploads the card, config, weights, code and metrics only (the end-to-end push of the training
example, with the upload stubbed, is in test_train_arcvq.py)."""

import huggingface_hub
import pytest

from arcvq_hf.training.publish import published_files, upload_model_folder


def test_published_files_are_the_card_config_weights_code_and_metrics_only(tmp_path) -> None:
    for name in ("README.md", "config.json", "model.safetensors", "modeling_arcvq.py", "eval_results.json",
                 "training_args.bin", "optimizer.pt", "checkpoint-2/config.json", "checkpoint-2/model.safetensors",
                 "runs/events.out.tfevents", ".hidden.json"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert published_files(tmp_path) == [
        "README.md",
        "config.json",
        "eval_results.json",
        "model.safetensors",
        "modeling_arcvq.py",
    ]


def test_upload_refuses_a_folder_without_its_card(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: pytest.fail("must not reach the Hub"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="write the model card before publishing"):
        upload_model_folder(tmp_path, "someone/model")
