"""Optional dependencies: the package itself needs only torch, transformers, safetensors, huggingface_hub, numpy
and PIL; each other library belongs to an extra of pyproject.toml, and a missing one says which extra to install."""

from __future__ import annotations


def missing_extra(package: str, extra: str) -> ImportError:
    """The error to raise (`from` the original ImportError) when `package`, part of `extra`, is not installed."""
    return ImportError(
        f"This part of arcvq_hf needs {package}, which is not installed. Install the '{extra}' extra: "
        f"pip install 'arcvq-hf[{extra}]' (from a checkout: pip install -e '.[{extra}]')."
    )


__all__ = ["missing_extra"]
