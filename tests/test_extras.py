"""With only the core dependencies (torch, transformers, safetensors, huggingface_hub, numpy, PIL) the package
imports, loads a shipped checkpoint and tokenizes a photo; each optional part names the extra that installs it."""

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "arcvq-vae-mnist"
# Top-level modules and distributions of the extras (and what only they pull in).
OPTIONAL_PREFIXES = (
    "datasets", "diffusers", "accelerate", "skimage", "scikit_image", "mlxtend", "matplotlib", "mpl_toolkits",
    "gradio", "scipy", "pandas", "sklearn", "scikit_learn",
)  # fmt: skip


def core_only_site_packages(folder: Path) -> Path:
    """A site-packages of links to this environment's, without the extras' packages and their metadata, so that
    both `import x` and transformers' availability checks (find_spec + importlib.metadata) see them missing."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.suffix == ".pth" or entry.name.lower().startswith(OPTIONAL_PREFIXES):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


# Runs with `python -S` (no site-packages) on the core-only folder and the repository.
CHILD = textwrap.dedent(
    """
    import json, sys

    sys.path[:0] = sys.argv[2:4]
    import numpy as np
    import PIL.Image
    import torch
    from transformers import AutoImageProcessor, AutoModel, pipeline

    import arcvq_hf

    folder = sys.argv[1]
    assert not any(module in sys.modules for module in ("datasets", "diffusers", "scipy"))
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    photo = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 56, 3), dtype=np.uint8))
    with torch.no_grad():
        tokens = model.encode(processor(photo).pixel_values).image_tokens
        pixels = model.decode(tokens)
    # The package is imported, so its own classes serve the folder: no remote code to trust.
    result = pipeline("image-tokenization", model=folder, trust_remote_code=False)(photo)
    errors = {}
    modules = ("arcvq_hf.data.builtin", "arcvq_hf.training.trainer", "arcvq_hf.prior.token_data")
    for module in (*modules, "arcvq_hf.interop.diffusers_export"):
        try:
            __import__(module)
            errors[module] = None
        except ImportError as err:
            errors[module] = str(err)
    print(json.dumps({
        "tokens": list(tokens.shape),
        "pixels": list(pixels.shape),
        "pipeline_equal": bool(torch.equal(result["image_tokens"], tokens[0])),
        "loaded": sorted(m for m in ("datasets", "diffusers", "accelerate", "scipy") if m in sys.modules),
        "errors": errors,
    }))
    """
)


def test_core_install_tokenizes_and_optional_parts_name_their_extra(tmp_path):
    site = core_only_site_packages(tmp_path / "site-packages")
    completed = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, str(CHECKPOINT), str(site), str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["tokens"] == [1, 10, 14] and report["pixels"] == [1, 1, 40, 56]
    assert report["pipeline_equal"] and report["loaded"] == []
    expected_extra = {
        "arcvq_hf.data.builtin": "data",
        "arcvq_hf.training.trainer": "train",
        "arcvq_hf.prior.token_data": "train",
        "arcvq_hf.interop.diffusers_export": "diffusers",
    }
    for module, extra in expected_extra.items():
        assert f"pip install 'arcvq-hf[{extra}]'" in (report["errors"][module] or ""), (module, report["errors"])
