"""Checks that a PNG file is a real picture: its size, and pixels that are not all one colour."""

from __future__ import annotations

from pathlib import Path

# What supervisor.plot draws: 7 x 4.5 inches at 110 dpi.
MIN_WIDTH = 600
MIN_HEIGHT = 400
# A blank (one-colour) image has no spread at all; a plot's lines and text give plenty.
MIN_PIXEL_STD = 0.02


def assert_png_drawn(path: Path) -> tuple[int, int]:
    """Open `path` with matplotlib and check it is a PNG of a drawn plot; (width, height)."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = matplotlib.image.imread(str(path))
    height, width = pixels.shape[:2]
    assert width >= MIN_WIDTH and height >= MIN_HEIGHT, (width, height)
    rgb = pixels[..., :3]
    assert float(rgb.std()) > MIN_PIXEL_STD, f"{path} looks blank (std {rgb.std():.4f})"
    # Not just a frame: a good share of its columns hold something other than white.
    inked = (rgb < 0.9).any(axis=2).any(axis=0).mean()
    assert inked > 0.5, f"{path}: only {inked:.0%} of its columns are drawn on"
    return width, height
