"""Independent random streams from one seed (torch-free, so the MPC loop and the world model share it)."""

from __future__ import annotations


def stream_seed(seed: int, index: int) -> int:
    """32-bit seed of stream ``index`` under ``seed``: a splitmix64 hash of (seed, index).

    Streams are per episode (and per replan), so an episode's randomness never depends on
    which other episodes share its batch. Hashed to 32 bits because torch's CPU generator
    (mt19937) ignores a seed's high 32 bits.
    """
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) >> 32
