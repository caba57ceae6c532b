"""Load an example script (examples/<name>.py) as a module, so tests call its `main` in-process."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """examples/<name>.py as a fresh module (its `if __name__ == "__main__"` block does not run)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and HfArgumentParser look their module up
    spec.loader.exec_module(module)
    return module
