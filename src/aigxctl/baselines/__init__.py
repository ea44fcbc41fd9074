"""Baselines the generative model is compared with, beyond the closed-form ones in
``aigxctl.allocation`` (equal split) and ``aigxctl.core`` (the water-filling optimum).

* ``baselines.sac``: deep RL (Stable-Baselines3's SAC) learning from the sum-rate reward alone;
  needs the ``rl`` extra (``pip install 'aigxctl[rl]'``) and raises ``SACUnavailable`` without
  it. Import it as ``from aigxctl.baselines import sac``: importing works without the extra.
"""

from __future__ import annotations
