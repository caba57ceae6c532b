"""Streaming training data (arcvq_hf.data.streaming, `examples/train_arcvq.py --streaming`): WebDataset shards and
image folders read lazily, ranks on disjoint shards, and a resume that continues exactly where the run stopped."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.streaming import (
    StreamingCrops,
    batches_from_worker,
    open_image_stream,
    stream_split_names,
)
from arcvq_hf.data.transforms import collate_pixel_values, pixel_values_transform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_shards(folder, shards: int, per_shard: int, start: int = 0, size=(20, 28)) -> None:
    """WebDataset shards `shard-000.tar`, ...: members `<key>.png` (random RGB, (height, width) = size), `<key>.cls`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    key = start
    for shard in range(shards):
        with tarfile.open(folder / f"shard-{shard:03d}.tar", "w") as tar:
            for _ in range(per_shard):
                buffer = io.BytesIO()
                PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
                for name, data in ((f"{key:06d}.png", buffer.getvalue()), (f"{key:06d}.cls", str(key).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                key += 1


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("webdataset")
    write_shards(root / "train", shards=4, per_shard=6)
    write_shards(root / "validation", shards=1, per_shard=3, start=1000)
    return root


def _crops(stream, **settings) -> StreamingCrops:
    processor = ArcVQImageProcessor(num_channels=3)
    return StreamingCrops(stream, 8, pixel_values_transform(processor), seed=3, shuffle_buffer=4, **settings)


def _sources(crops: StreamingCrops, batches: int) -> list[list[str]]:
    loader = crops.dataloader(lambda items: [item["source"] for item in items])
    iterator = iter(loader)
    return [next(iterator) for _ in range(batches)]


def test_webdataset_and_image_folder_sources(shards, tmp_path) -> None:
    assert stream_split_names(str(shards)) == ["train", "validation"]
    stream = open_image_stream(str(shards), "train")
    assert stream.num_shards == 4
    example = next(iter(stream))
    assert isinstance(example["image"]["bytes"], bytes) and example["__key__"] == "000000"  # undecoded
    with pytest.raises(ValueError, match="no WebDataset shards for split 'test'"):
        open_image_stream(str(shards), "test")

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        PIL.Image.fromarray(np.full((12, 10, 3), index * 40, np.uint8)).save(folder / f"{index}.png")
    crops = _crops(open_image_stream(str(folder)), batch_size=2)
    batch = collate_pixel_values([item for _, item in zip(range(4), crops, strict=False)])
    assert batch["pixel_values"].shape == (4, 3, 8, 8)  # endless: 4 crops out of 3 images


def test_ranks_read_disjoint_shards_and_a_resume_continues_exactly(shards) -> None:
    stream = open_image_stream(str(shards), "train")
    seen = []
    for rank in (0, 1):
        # Two DataLoader workers per rank, each on one of the rank's two shards.
        batches = _sources(_crops(stream, rank=rank, world_size=2, batch_size=2, num_workers=2), 5)
        seen.append({source.split("#")[0] for batch in batches for source in batch})
        # Resumed after 3 batches: the same next batches as the uninterrupted stream, across workers.
        resumed = _sources(_crops(stream, rank=rank, world_size=2, batch_size=2, num_workers=2).resumed(3), 2)
        assert resumed == batches[3:]
    assert all(len(files) == 2 for files in seen) and not seen[0] & seen[1]
    # A pass is 12 images per rank: the stream goes on, reshuffled (shards are reassigned to ranks each pass); in
    # every pass the two ranks together read each of the 24 images exactly once.
    ranks = [sum(_sources(_crops(stream, rank=rank, world_size=2, batch_size=4), 6), []) for rank in (0, 1)]
    passes = [ranks[0][:12] + ranks[1][:12], ranks[0][12:] + ranks[1][12:]]
    assert all(len({source.split("#")[1] for source in part}) == 24 for part in passes)
    assert passes[0] != passes[1]
    assert [batches_from_worker(5, worker, 2) for worker in (0, 1)] == [3, 2]


def test_two_process_streaming_run_saves_and_resumes(shards, tmp_path) -> None:
    def run(output, *extra) -> list[dict]:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            os.path.join(REPO, "tests", "streaming_worker.py"),
            "--streaming", "--dataset", str(shards), "--random_crop_size", "16", "--shuffle_buffer", "4",
            "--hidden_size", "16", "--codebook_size", "32", "--codebook_dim", "8",
            "--output_dir", str(output), "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "2",
            "--per_device_eval_batch_size", "2", "--dataloader_num_workers", "2", "--ddp_backend", "gloo",
            "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", *extra,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        return [json.loads((output / "ranks" / f"consumed{rank}.json").read_text()) for rank in (0, 1)]

    full = run(tmp_path / "full")
    assert (tmp_path / "full" / "checkpoint-2").is_dir() and full[0]["world_size"] == 2
    files = [{source.split("#")[0] for batch in rank["batches"] for source in batch} for rank in full]
    assert all(len(rank["batches"]) == 4 for rank in full) and files[0] and files[1] and not files[0] & files[1]

    resumed = run(tmp_path / "resumed", "--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-2"))
    for rank in (0, 1):
        assert resumed[rank]["batches"] == full[rank]["batches"][2:]  # steps 3 and 4, the same images
    codebooks = [load_file(str(tmp_path / name / "ranks" / "codebook0.st"))["codebook"] for name in ("full", "resumed")]
    torch.testing.assert_close(codebooks[1], codebooks[0], rtol=1e-5, atol=1e-6)
    saved = ArcVQModel.from_pretrained(tmp_path / "resumed")
    assert saved.schedule_step == 4
    evaluation = json.loads((tmp_path / "resumed" / "eval_results.json").read_text())
    assert evaluation["eval_num_images"] == 3  # the validation shard, centre-cropped to 16 px
