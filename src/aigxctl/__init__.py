"""aigxctl: generative-AI power allocation for wireless networks.

Exact batched water-filling (the expert), a conditional diffusion model that learns to generate
the allocation from the channel gains, and the T1 -> T2 -> T3 "virtuous cycle", over a compiled
C++/CUDA core. The public Python API is re-exported here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aigxctl.core import sum_rate, waterfill

try:
    __version__ = version("aigxctl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "sum_rate", "waterfill"]
