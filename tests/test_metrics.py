import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from wmplan.metrics import psnr, ssim


def _images(seed: int, shape=(2, 3, 24, 20, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.normal(0, 20, shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    return a, b


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Independent SSIM (the scikit-image algorithm): scipy Gaussian filter with a
    radius-5 window, population statistics, borders cropped, mean over channels."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]
        f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s.mean())
    return float(np.mean(values))


def test_psnr_matches_formula_per_image():
    a, b = _images(0)
    got = psnr(a, b)
    assert got.shape == (2, 3)
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean(axis=(-3, -2, -1))
    np.testing.assert_allclose(got.numpy(), 10 * np.log10(255.0**2 / mse), rtol=1e-12)


def test_psnr_float_images_use_unit_range():
    a, b = _images(1)
    np.testing.assert_allclose(psnr(a / 255.0, b / 255.0).numpy(), psnr(a, b).numpy(), rtol=1e-10)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    a, _ = _images(2)
    assert torch.isinf(psnr(a, a)).all()
    torch.testing.assert_close(ssim(a, a), torch.ones(2, 3, dtype=torch.float64))


def test_ssim_matches_reference_implementation():
    a, b = _images(3)
    got = ssim(a, b)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(_ssim_reference(a[i, j], b[i, j], 255.0), abs=1e-10)
    assert 0.0 < got.min() < got.max() < 1.0


def test_ssim_of_constant_images_has_closed_form():
    # Zero variance: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a = torch.full((16, 16, 3), 0.25)
    b = torch.full((16, 16, 3), 0.75)
    c1 = 0.01**2
    expected = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("pred", "target", "error"),
    [
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), "shapes differ"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32), "dtypes differ"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8), r"\[..., H, W, 3\]"),
        (np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 3), np.int32), "uint8 or float"),
    ],
)
def test_bad_inputs_are_named(pred, target, error):
    with pytest.raises((ValueError, TypeError), match=error):
        psnr(pred, target)


def test_ssim_rejects_images_smaller_than_window():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
