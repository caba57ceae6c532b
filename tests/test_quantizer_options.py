"""Options of the SAMP layer beyond the paper (docs/method.md §1.10): the arc-weight floor, EMA code updates under
angle assignment, dead-code restarts and k-means init, and the field-baseline preset built from them. Each option is
off by default and then changes nothing."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from quantizer_sync_worker import STEPS, layer, process_batch
from safetensors.torch import load_file

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.model.quantization import (
    SphericalAngularMarginQuantizer,
    arc_weight_at,
    assign_codes,
    ema_update_codebook_,
    kmeans_codebook,
    restart_dead_codes_,
)


def test_arc_weight_floor_holds_the_weight_and_zero_floor_is_the_paper_schedule():
    assert arc_weight_at(10**6, 1.5, 5e-4, floor=0.1) == 0.1
    assert arc_weight_at(0, 1.5, 5e-4, floor=0.1) == 1.5
    assert arc_weight_at(3000, 1.5, 5e-4) == arc_weight_at(3000, 1.5, 5e-4, floor=0.0) == 1.5 * math.exp(-1.5)
    tensor = arc_weight_at(torch.tensor(10**6), 1.5, 5e-4, floor=0.1)
    assert tensor.item() == pytest.approx(0.1)
    layer = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4, arc_weight_floor=0.05)
    layer.set_step(20000)
    assert layer.current_arc_weight == 0.05 and layer.schedule_tensors()[1].item() == pytest.approx(0.05)


def test_ema_update_matches_a_float64_computation():
    torch.manual_seed(0)
    codebook, latents = torch.randn(6, 3), torch.randn(20, 3)
    indices = torch.randint(0, 6, (20,))
    usage, sums = torch.rand(6) + 0.5, torch.randn(6, 3)
    expected_usage, expected_sums = usage.double().clone(), sums.double().clone()
    for j in range(6):
        members = latents.double()[indices == j]
        expected_usage[j] = 0.9 * expected_usage[j] + 0.1 * len(members)
        expected_sums[j] = 0.9 * expected_sums[j] + 0.1 * members.sum(0)
    total = expected_usage.sum()
    smoothed = (expected_usage + 1e-5) / (total + 6e-5) * total
    ema_update_codebook_(codebook, usage, sums, latents, indices, decay=0.9)
    torch.testing.assert_close(usage.double(), expected_usage)
    torch.testing.assert_close(sums.double(), expected_sums)
    torch.testing.assert_close(codebook.double(), expected_sums / smoothed[:, None])


def test_ema_layer_moves_codes_only_in_training_and_the_vq_loss_keeps_only_the_commitment():
    torch.manual_seed(1)
    layer = SphericalAngularMarginQuantizer(
        codebook_size=8, codebook_dim=4, codebook_update="ema", ema_decay=0.5, use_ball_bound=False
    )
    assert not layer.codebook.requires_grad
    torch.testing.assert_close(layer.code_sum, layer.codebook)  # every code starts as its own one member
    latents = torch.randn(2, 4, 3, 3)
    before = layer.codebook.clone()
    _, _, _, parts = layer.eval()(latents, return_loss_breakdown=True)
    assert torch.equal(layer.codebook, before)
    assert torch.equal(parts.vq_loss, 0.25 * parts.commitment_loss)
    quantized, indices, _ = layer.train()(latents)
    torch.testing.assert_close(quantized, before[indices].permute(0, 3, 1, 2))  # looked up before the update
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    used = indices.unique()
    for j in used.tolist():  # a used code moves halfway (decay 0.5) toward the mean of its latents, up to smoothing
        members = flat[indices.reshape(-1) == j]
        expected = (0.5 * before[j] + 0.5 * members.sum(0)) / (0.5 + 0.5 * len(members))
        torch.testing.assert_close(layer.codebook[j], expected, rtol=1e-3, atol=1e-4)


def test_dead_codes_restart_on_batch_latents_and_live_codes_stay():
    torch.manual_seed(2)
    codebook, latents = torch.randn(5, 3), torch.randn(12, 3)
    usage = torch.tensor([3.0, 0.1, 2.5, 0.0, 1.9])
    before = codebook.clone()
    dead = restart_dead_codes_(codebook, usage, latents, threshold=2.0)
    assert dead.tolist() == [False, True, False, True, True]
    assert torch.equal(codebook[~dead], before[~dead])
    for row in codebook[dead]:
        assert (latents == row).all(dim=1).any()
    assert usage[dead].tolist() == [2.0, 2.0, 2.0]


def test_dead_code_restart_revives_a_collapsed_codebook():
    torch.manual_seed(3)
    latents = F.normalize(torch.randn(256, 4) + torch.tensor([4.0, 0.0, 0.0, 0.0]), dim=1) * 3  # a cone around e1
    used = {}
    for threshold in (0.0, 1.0):
        layer = SphericalAngularMarginQuantizer(
            codebook_size=16, codebook_dim=4, use_arc_margin=False, use_ball_bound=False, dead_code_threshold=threshold
        )
        with torch.no_grad():  # one code along e1 wins every latent; the other 15 point away from all of them
            layer.embedding.weight.copy_(torch.tensor([-1.0, 0.0, 0.0, 0.0]) + 1e-3 * torch.randn(16, 4))
            layer.embedding.weight[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        layer.train()
        for _ in range(3):
            layer(latents)
        used[threshold] = layer.eval()(latents)[1].unique().numel()
    assert used[0.0] == 1 and used[1.0] >= 10, used


def test_options_travel_with_checkpoints_and_default_checkpoints_have_no_new_tensors(tmp_path):
    small = {"num_channels": 1, "hidden_size": 16, "residual_hidden_size": 8, "codebook_size": 16, "codebook_dim": 4}
    plain = ArcVQModel(ArcVQConfig(**small))
    assert not any("code_usage" in key or "code_sum" in key for key in plain.state_dict())
    torch.manual_seed(4)
    model = ArcVQModel(ArcVQConfig(**small, codebook_update="ema", dead_code_threshold=0.5, arc_weight_floor=0.01))
    torch.testing.assert_close(model.quantizer.code_sum, model.codebook)
    model.train()
    model(torch.rand(4, 1, 8, 8) * 2 - 1).loss.backward()
    model.save_pretrained(tmp_path)
    loaded = ArcVQModel.from_pretrained(tmp_path)
    assert loaded.config.codebook_update == "ema" and loaded.quantizer.dead_code_threshold == 0.5
    for name in ("code_usage", "code_sum"):
        assert torch.equal(getattr(loaded.quantizer, name), getattr(model.quantizer, name))
    assert torch.equal(loaded.codebook, model.codebook)


def test_bad_option_values_are_refused():
    with pytest.raises(ValueError, match="codebook_update"):
        ArcVQConfig(codebook_update="kmeans")
    with pytest.raises(ValueError, match="ema_decay"):
        ArcVQConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        ArcVQConfig(dead_code_threshold=-1)
    with pytest.raises(ValueError, match="codebook_update"):
        SphericalAngularMarginQuantizer(codebook_update="adam")


def test_codes_moved_by_the_options_stay_inside_the_ball_for_evaluation():
    torch.manual_seed(5)
    layer = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4, codebook_update="ema", ema_decay=0.0)
    latents = torch.randn(2, 4, 3, 3) * 10  # far outside the ball of radius R(0) = 1
    layer.train()(latents)
    assert layer.codebook.norm(dim=1).max() <= 1.0 + 1e-5
    training_tokens = layer(latents)[1]
    assert torch.equal(layer.eval()(latents)[1], training_tokens)


def test_spherical_codes_give_the_decoder_unit_vectors_and_tokens_decode_the_same():
    torch.manual_seed(6)
    layer = SphericalAngularMarginQuantizer(codebook_size=16, codebook_dim=4, spherical_codes=True).eval()
    with torch.no_grad():
        layer.embedding.weight.mul_(torch.rand(16, 1) * 5 + 0.1)  # codes of many norms
    latents = torch.randn(2, 4, 3, 3, requires_grad=True)
    quantized, indices, _ = layer(latents)
    torch.testing.assert_close(quantized.norm(dim=1), torch.ones(2, 3, 3))
    torch.testing.assert_close(layer.codes_for(indices).permute(0, 3, 1, 2), quantized)
    plain = SphericalAngularMarginQuantizer(codebook_size=16, codebook_dim=4).eval()
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(plain(latents)[1], indices)  # the same assignment, only what is decoded changes
    quantized.sum().backward()
    assert torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


# ----- k-means init and the field-baseline preset -------------------------------------------------------------------
def _lloyd_reference(latents: torch.Tensor, starts: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain float64 Lloyd iterations, one latent at a time: nearest mean by squared distance, mean of members."""
    data = latents.double()
    means = data[starts].clone()
    counts = torch.zeros(len(starts), dtype=torch.float64)
    for _ in range(iterations):
        members = [[] for _ in range(len(starts))]
        for row in data:
            members[int(((means - row) ** 2).sum(dim=1).argmin())].append(row)
        counts = torch.tensor([float(len(m)) for m in members], dtype=torch.float64)
        means = torch.stack([torch.stack(m).mean(0) if m else means[j] for j, m in enumerate(members)])
    return means, counts


def test_kmeans_codebook_equals_lloyd_iterations_from_distinct_starting_latents():
    torch.manual_seed(3)
    latents = torch.cat([torch.randn(40, 4) + 6 * torch.randn(1, 4) for _ in range(5)])  # five blobs, 200 rows
    torch.manual_seed(11)
    means, counts = kmeans_codebook(latents, 7, iterations=6, max_elements=64)  # several assignment chunks
    torch.manual_seed(11)
    starts = torch.randperm(200)[:7]  # distinct latents when the batch holds enough
    expected_means, expected_counts = _lloyd_reference(latents, starts, 6)
    torch.testing.assert_close(means.double(), expected_means, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts.double(), expected_counts) and counts.sum() == 200


def test_kmeans_codebook_with_fewer_latents_than_codes_keeps_every_code_a_latent():
    latents = torch.randn(5, 3)
    means, counts = kmeans_codebook(latents, 12, iterations=3)
    assert means.shape == (12, 3) and counts.sum() == 5
    assert all(any(torch.allclose(m, z) for z in latents) for m in means)


def test_kmeans_init_runs_once_on_the_first_training_batch_and_never_in_eval():
    layer = SphericalAngularMarginQuantizer(
        codebook_size=6,
        codebook_dim=3,
        distance="euclidean",
        use_ball_bound=False,
        use_arc_margin=False,
        codebook_update="ema",
        dead_code_threshold=0.5,
        kmeans_init=True,
        kmeans_iters=4,
    )
    before = layer.codebook.detach().clone()
    layer.eval()
    layer(torch.randn(2, 10, 3))
    assert not layer.codebook_initialized and torch.equal(layer.codebook, before)
    layer.train()
    batch = torch.randn(2, 30, 3)
    torch.manual_seed(5)
    layer(batch)
    torch.manual_seed(5)
    means, counts = kmeans_codebook(batch.reshape(-1, 3), 6, iterations=4, distance="euclidean")
    # The batch was then quantized with those means and folded into the EMA averages as usual.
    usage, sums, codebook = counts.clone(), means * counts.unsqueeze(1), means.clone()
    ema_update_codebook_(
        codebook, usage, sums, batch.reshape(-1, 3), assign_codes(batch.reshape(-1, 3), means, "euclidean"), 0.99
    )
    assert layer.codebook_initialized
    torch.testing.assert_close(layer.codebook, codebook)
    torch.testing.assert_close(layer.code_usage, usage)
    after_first = layer.codebook.detach().clone()
    layer(torch.randn(2, 30, 3) + 100.0)  # far away: k-means again would move every code there
    assert (layer.codebook - after_first).abs().max() < 10.0


def test_field_baseline_preset_saves_its_initialised_codebook_and_reloads_without_reinit(tmp_path):
    config = ArcVQConfig.from_preset(
        "ema-kmeans-restart", codebook_size=16, codebook_dim=8, hidden_size=16, residual_hidden_size=8
    )
    assert (config.distance, config.codebook_update, config.kmeans_init, config.use_arc_margin) == (
        "euclidean",
        "ema",
        True,
        False,
    )
    torch.manual_seed(0)
    model = ArcVQModel(config).train()
    model(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert model.quantizer.codebook_initialized
    model.save_pretrained(tmp_path)
    loaded = ArcVQModel.from_pretrained(tmp_path)
    assert loaded.quantizer.codebook_initialized
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)
    loaded.train()(torch.rand(2, 3, 16, 16) * 2 - 1)  # resumed training: EMA moves the codes a little, no k-means
    assert (loaded.quantizer.codebook - model.quantizer.codebook).abs().max() < 1.0


def test_field_baseline_tokenizes_like_vector_quantize_pytorch_on_the_same_codebook():
    """The shipped baseline needs no vector-quantize-pytorch at inference: on the library layer's own codebook
    (trained a few steps by the library), the preset's layer gives the same indices and the same quantized vectors."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    library = vqp.VectorQuantize(
        dim=8,
        codebook_size=32,
        decay=0.99,
        kmeans_init=True,
        kmeans_iters=10,
        threshold_ema_dead_code=2,
        commitment_weight=1.0,
        rotation_trick=False,
        accept_image_fmap=True,
        sync_codebook=False,
    )
    library.train()
    for _ in range(5):
        library(torch.randn(4, 8, 6, 6))
    library.eval()
    ours = SphericalAngularMarginQuantizer(
        32,
        8,
        **{
            k: v
            for k, v in ArcVQConfig.from_preset("ema-kmeans-restart").to_dict().items()
            if k
            in (
                "distance",
                "use_ball_bound",
                "use_arc_margin",
                "codebook_update",
                "ema_decay",
                "dead_code_threshold",
                "kmeans_init",
                "commitment_cost",
            )
        },
    ).eval()
    with torch.no_grad():
        ours.embedding.weight.copy_(library.codebook)  # (K, D)
    images = torch.randn(3, 8, 7, 5) * 2
    with torch.no_grad():
        library_quantized, library_indices, _ = library(images)
        quantized, indices, _ = ours(images)
    assert torch.equal(indices, library_indices)
    torch.testing.assert_close(quantized, library_quantized, rtol=0, atol=1e-6)


def test_codebook_options_keep_every_process_identical_under_torch_distributed(tmp_path):
    # DDP averages gradients, but EMA updates, restarts and the k-means init move the codebook outside the optimizer:
    # without synchronisation every process would drift to its own codebook (and save only process 0's).
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worker = os.path.join(repo, "tests", "quantizer_sync_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([repo, os.path.join(repo, "tests")])}
    result = subprocess.run([*command, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [load_file(str(tmp_path / f"rank{rank}.safetensors")) for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], atol=0, rtol=0, msg=key)
    assert ranks[0]["all.codebook_initialized"].item() == 1.0

    # Plain EMA: the two processes together make exactly the updates of one process that sees both batches.
    single = layer(codebook_update="ema", use_arc_margin=False, use_ball_bound=False)
    for step in range(STEPS):
        single(torch.cat([process_batch(0, step), process_batch(1, step)]))
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0][f"ema.{key}"], value.float(), atol=1e-5, rtol=1e-5, msg=key)
