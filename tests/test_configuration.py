"""ArcVQConfig: docs/method.md §1.7 defaults, presets, validation, JSON round trip."""

import pytest

from arcvq_hf import PRESETS, ArcVQConfig


def test_defaults_are_the_papers_vqvae_variant():
    config = ArcVQConfig()
    assert (config.codebook_size, config.codebook_dim, config.downsampling_factor) == (512, 64, 4)
    assert (config.hidden_size, config.residual_hidden_size, config.num_residual_layers) == (128, 32, 2)
    assert (config.arc_scale, config.arc_margin, config.arc_top_k) == (5.0, 0.1, 3)
    # gamma0 = 1.5 instead of the authors' 1: set from the sweep in benchmarks/RESULTS.md.
    assert (config.arc_weight, config.arc_weight_decay, config.commitment_cost) == (1.5, 5e-4, 0.25)
    assert config.distance == "cosine" and config.use_ball_bound and config.use_arc_margin
    assert not config.legacy_beta_placement


def test_vqgan_variant_preset():
    config = ArcVQConfig.from_preset("arcvq-authors", variant="vqgan")
    assert (config.codebook_size, config.codebook_dim, config.downsampling_factor) == (1024, 16, 8)
    assert config.channel_multipliers == [1, 2, 2, 4] and config.base_channels == 128
    assert (config.ball_growth_rate, config.arc_scale, config.arc_weight_decay) == (5e-5, 10.0, 1e-4)
    assert config.arc_weight == 1.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_switch_exactly_their_ablation(preset):
    config = ArcVQConfig.from_preset(preset, num_channels=1)
    assert config.num_channels == 1
    for key, value in PRESETS[preset].items():
        assert getattr(config, key) == value
    baseline = ArcVQConfig.from_preset("vq-baseline")
    assert baseline.distance == "euclidean" and baseline.codebook_init == "uniform_scaled"
    assert not baseline.use_ball_bound and not baseline.use_arc_margin


def test_unknown_preset_and_variant():
    with pytest.raises(ValueError, match="preset"):
        ArcVQConfig.from_preset("arcface")
    with pytest.raises(ValueError, match="variant"):
        ArcVQConfig.from_preset("arcvq", variant="vit")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("codebook_size", 0),
        ("codebook_dim", -3),
        ("arc_top_k", 0),
        ("arc_top_k", 2.5),
        ("backbone", "resnet"),
        ("distance", "manhattan"),
        ("codebook_init", "gaussian"),
        ("ball_growth_rate", -1e-4),
        ("arc_weight_decay", -1.0),
        ("arc_scale", float("nan")),
        ("commitment_cost", -0.25),
        ("data_variance", 0.0),
        ("channel_multipliers", []),
        ("quantizer_chunk_elements", 0),
        ("reconstruction_loss", "huber"),
    ],
)
def test_invalid_values_raise_a_clear_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        ArcVQConfig(**{field: value})


def test_vqgan_widths_must_fit_the_group_norm():
    with pytest.raises(ValueError, match="norm_num_groups"):
        ArcVQConfig(backbone="vqgan", base_channels=20, norm_num_groups=32)


def test_json_round_trip(tmp_path):
    config = ArcVQConfig.from_preset("no-arc", variant="vqgan", codebook_size=77)
    config.save_pretrained(tmp_path)
    loaded = ArcVQConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.channel_multipliers == [1, 2, 2, 4]
