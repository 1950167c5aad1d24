import numpy as np
import pytest

from wmplan.envs.chamfer import chamfer_distance


def brute_force(a: np.ndarray, b: np.ndarray) -> float:
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return float(d.min(axis=1).mean() + d.min(axis=0).mean())


@pytest.mark.parametrize("n, m, dim", [(1, 1, 2), (30, 50, 2), (64, 17, 3)])
def test_matches_brute_force(n, m, dim):
    rng = np.random.default_rng(n * 100 + m)
    a, b = rng.normal(size=(n, dim)), rng.normal(size=(m, dim))
    assert chamfer_distance(a, b) == pytest.approx(brute_force(a, b), rel=1e-12)


def test_properties():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(40, 3)), rng.uniform(size=(25, 3))
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, rng.permutation(a)) == 0.0
    assert chamfer_distance(a, b) == pytest.approx(chamfer_distance(b, a))
    # Each direction contributes its mean nearest-neighbour distance: 5 + 5 here.
    assert chamfer_distance([[0.0, 0.0]], [[3.0, 4.0]]) == pytest.approx(10.0)
    # A translation by t moves no point farther than |t| from its old neighbour.
    assert 0 < chamfer_distance(a, a + [0.5, 0, 0]) <= 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="dimensions differ"):
        chamfer_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        chamfer_distance(np.zeros((0, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        chamfer_distance(np.full((2, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        chamfer_distance(np.zeros((3, 2, 1)), np.zeros((3, 2)))
