"""Image quality metrics: PSNR and SSIM, one value per image.

Images are `[..., H, W, 3]`, either uint8 (data range 255) or float in [0, 1] (data
range 1); `pred` and `target` must share shape and dtype. Computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, shape [...]; inf for identical images."""
    x, y, data_range = _prepare(pred, target)
    mse = (x - y).pow(2).mean(dim=(-3, -2, -1))
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf


def ssim(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), shape [...]: Gaussian window 11, sigma 1.5,
    K1 = 0.01, K2 = 0.03, population statistics, valid (unpadded) windows, averaged over
    pixels and channels. 1 for identical images."""
    x, y, data_range = _prepare(pred, target)
    *lead, H, W, C = x.shape
    if min(H, W) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images at least {SSIM_WINDOW} px on each side, got {H}x{W}")
    x = x.reshape(-1, H, W, C).permute(0, 3, 1, 2)  # [N, C, H, W]
    y = y.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    stats = _gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1))  # [N, 5C, H-10, W-10]
    mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3)).reshape(lead)


def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Separable normalised Gaussian filter without padding, per channel: [N, K, H, W] -> [N, K, H-10, W-10]."""
    r = SSIM_WINDOW // 2
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * SSIM_SIGMA**2))
    g = (g / g.sum()).to(x.device)
    K = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(K, 1, -1, 1), groups=K)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(K, 1, 1, -1), groups=K)


def _prepare(pred, target) -> tuple[torch.Tensor, torch.Tensor, float]:
    x, y = torch.as_tensor(pred), torch.as_tensor(target)
    if x.shape != y.shape:
        raise ValueError(f"pred and target shapes differ: {list(x.shape)} vs {list(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"pred and target dtypes differ: {x.dtype} vs {y.dtype}")
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"expected images [..., H, W, 3], got {list(x.shape)}")
    if x.dtype == torch.uint8:
        data_range = 255.0
    elif x.is_floating_point():
        data_range = 1.0
    else:
        raise TypeError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return x.double(), y.double(), data_range

