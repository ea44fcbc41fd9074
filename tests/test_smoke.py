"""The installed package imports, the core loads, and one known allocation is right."""

import numpy as np

import aigxctl


def test_two_channel_allocation_matches_hand_solution():
    # a = 1/g = (1, 0.5); P = 1: mu = (1 + 1 + 0.5) / 2 = 1.25 -> p = (0.25, 0.75).
    p = aigxctl.waterfill(np.array([1.0, 2.0]), 1.0)
    np.testing.assert_allclose(p, [0.25, 0.75], rtol=1e-12)
