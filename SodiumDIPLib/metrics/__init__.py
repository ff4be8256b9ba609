"""Image-quality metrics with and without a reference (PSNR, SSIM, FSIM, LPIPS, CRC, leakage, ...)."""
