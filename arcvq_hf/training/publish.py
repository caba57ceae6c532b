"""Publishing a saved model folder to the Hub: exactly the files a user needs (the model card, config, weights,
remote-code files and metrics JSONs), never a pickle such as Trainer's `training_args.bin`, never the
`checkpoint-*` sub-folders or logs. Write the model card first (`arcvq_hf.training.model_card.write_model_card`).
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub

# What a published model folder holds; everything else (checkpoint-* sub-folders, pickles, logs) stays local.
PUBLISHED_PATTERNS = ["README.md", "*.json", "*.safetensors", "*.py"]
NEVER_PUBLISHED = ["*/*", ".*", "training_args.bin", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"]


def published_files(folder: str | os.PathLike) -> list[str]:
    """The files of `folder` that `upload_model_folder` sends (relative paths, sorted)."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(folder)
    files = [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]
    return sorted(filter_repo_objects(files, allow_patterns=PUBLISHED_PATTERNS, ignore_patterns=NEVER_PUBLISHED))


def upload_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload ArcVQ model",
) -> str:
    """Create the Hub repo if needed and upload the model folder's published files (see `published_files`).
    The model card must be written first. Returns the repo id (with its namespace)."""
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no README.md: write the model card before publishing.")
    repo_id = huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    if revision:
        huggingface_hub.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
    huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=PUBLISHED_PATTERNS,
        ignore_patterns=NEVER_PUBLISHED,
        token=token,
        revision=revision,
        commit_message=commit_message,
    )
    return repo_id


__all__ = ["NEVER_PUBLISHED", "PUBLISHED_PATTERNS", "published_files", "upload_model_folder"]
