"""aigxctl: generative-AI power allocation for wireless networks.

Exact batched water-filling (the expert), a conditional diffusion model that learns to generate
the allocation from the channel gains, and the T1 -> T2 -> T3 "virtuous cycle", over a compiled
C++/CUDA core. The public Python API is re-exported here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aigxctl.core import sum_rate, waterfill

try:
    __version__ = version("aigxctl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_model", "sum_rate", "waterfill"]


def __getattr__(name: str) -> Any:
    # load_model is imported on first use: it pulls in torch (~2 s), which `import aigxctl`
    # and the commands that need no model should not pay for.
    if name == "load_model":
        from aigxctl.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'aigxctl' has no attribute {name!r}")
