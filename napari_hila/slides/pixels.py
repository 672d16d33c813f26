"""What a TIFF's pixels are, in words, and how they become the RGB every slide reads as.

napari-hila reads 8-bit brightfield slides. RGB is read as is; grey and
grey+alpha become RGB (grey repeated), alpha is composited over white, as
OpenSlide paints it, so either backend gives the same pixels. Everything else
(fluorescence channels, 16-bit or signed pixels, CMYK, palettes, compressions
tifffile cannot decode) is refused with a message that names what the file
holds, so the user knows what to convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tifffile

from napari_hila.errors import SlideError

_PHOTOMETRIC = tifffile.PHOTOMETRIC
_EXTRASAMPLE = tifffile.EXTRASAMPLE
#: Series axes that hold more than one image per level (channels, planes, times).
_STACK_AXES = set("CQIZTR")


def rgba_over_white(rgba: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """Composite RGBA on white, so transparent areas (and outside a slide) are white.

    Straight alpha by default (PIL's RGBA, TIFF's unassociated alpha);
    ``premultiplied`` for TIFF's associated alpha, whose colours are already scaled.
    """
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    if premultiplied:
        return (rgb.astype(np.uint16) + (255 - a)).clip(0, 255).astype(np.uint8)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


@dataclass(frozen=True)
class PixelLayout:
    """How the samples of an 8-bit brightfield TIFF page map to RGB."""

    colour: bool  # three colour samples (RGB/YCbCr) or one grey sample
    alpha: str | None = None  # None, "straight" or "premultiplied"
    inverted: bool = False  # MINISWHITE: 0 is white

    @property
    def samples(self) -> int:
        return (3 if self.colour else 1) + (self.alpha is not None)

    @property
    def openslide_misreads(self) -> bool:
        """Grey+alpha: OpenSlide (libtiff's RGBA reader) returns wrong pixels for it."""
        return not self.colour and self.alpha is not None

    @property
    def is_rgb(self) -> bool:
        return self.colour and self.alpha is None

    def to_rgb(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w[, samples]) uint8 samples of this layout -> (h, w, 3) uint8 RGB."""
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        pixels = pixels[..., : self.samples]
        if self.is_rgb:
            return pixels
        if self.inverted:
            pixels = pixels.copy()
            pixels[..., 0] = 255 - pixels[..., 0]
        if not self.colour:
            colour = np.repeat(pixels[..., :1], 3, axis=2)
            pixels = colour if self.alpha is None else np.concatenate([colour, pixels[..., 1:]], 2)
        if self.alpha is not None:
            return rgba_over_white(pixels, premultiplied=self.alpha == "premultiplied")
        return pixels


RGB = PixelLayout(colour=True)


def describe_pixels(series: tifffile.TiffPageSeries) -> str:
    """E.g. "uint16, 3 samples per pixel, photometric RGB" for messages."""
    page = series.keyframe
    photometric = _name(page.photometric)
    channels = _stack_channels(series)
    samples = page.samplesperpixel
    kind = f"{channels} channel images of {series.dtype}" if channels > 1 else str(series.dtype)
    per_pixel = f"{samples} sample{'s' if samples != 1 else ''} per pixel"
    return f"{kind}, {per_pixel}, photometric {photometric}"  # e.g. "uint16, 3 samples ..."


def pixel_layout(path: object, series: tifffile.TiffPageSeries) -> PixelLayout:
    """The layout of an 8-bit brightfield series, or SlideError naming what the file holds."""
    page = series.keyframe
    photometric = page.photometric
    samples = page.samplesperpixel
    channels = _stack_channels(series)
    fix = "napari-hila reads 8-bit brightfield slides (RGB, e.g. H&E)"
    if channels > 1 or (photometric == _PHOTOMETRIC.MINISBLACK and samples > 2):
        count = max(channels, samples)
        raise SlideError(
            f"{path}: a fluorescence or multi-channel image with {count} channels ({describe_pixels(series)}), "
            f"not brightfield; {fix}. Open it with napari's own reader instead"
        )
    if series.dtype != np.uint8:
        raise SlideError(
            f"{path}: {series.dtype} pixels ({describe_pixels(series)}) are not supported; {fix} with uint8 "
            "samples: convert it, e.g. with vips or bfconvert"
        )
    if photometric not in (
        _PHOTOMETRIC.RGB,
        _PHOTOMETRIC.YCBCR,
        _PHOTOMETRIC.MINISBLACK,
        _PHOTOMETRIC.MINISWHITE,
    ):
        raise SlideError(
            f"{path}: photometric {_name(photometric)} images ({describe_pixels(series)}) are not supported; {fix}"
        )
    colour = photometric in (_PHOTOMETRIC.RGB, _PHOTOMETRIC.YCBCR)
    base = 3 if colour else 1
    extra = samples - base
    if extra < 0 or extra > 1:
        raise SlideError(
            f"{path}: {samples} samples per pixel ({describe_pixels(series)}) are not supported; {fix}"
        )
    alpha = None
    if extra:
        kind = page.extrasamples[0] if page.extrasamples else _EXTRASAMPLE.UNSPECIFIED
        if kind == _EXTRASAMPLE.ASSOCALPHA:
            alpha = "premultiplied"
        elif kind == _EXTRASAMPLE.UNASSALPHA:
            alpha = "straight"
        else:
            raise SlideError(
                f"{path}: the extra sample of {describe_pixels(series)} is not an alpha channel; {fix}"
            )
    return PixelLayout(colour=colour, alpha=alpha, inverted=photometric == _PHOTOMETRIC.MINISWHITE)


def tifffile_decode_problem(page: tifffile.TiffPage) -> str | None:
    """Why tifffile cannot decode this page's pixels (naming the compression), or None."""
    compression = page.compression
    name = _name(compression)
    try:
        known = compression in tifffile.TIFF.DECOMPRESSORS
    except Exception:  # tifffile raises for codecs it knows of but lacks
        known = False
    if not known:
        return f"{name} (compression {int(compression)}) tiles, which tifffile cannot decode"
    subsampling = getattr(page, "subsampling", None)
    if (
        page.photometric == _PHOTOMETRIC.YCBCR
        and compression not in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG)
        and subsampling not in (None, (1, 1))
    ):
        return (
            f"YCbCr {subsampling[0]}x{subsampling[1]}-subsampled {name} tiles, "
            "which tifffile cannot decode"
        )
    return None


def compression_name(page: tifffile.TiffPage) -> str:
    """E.g. "JPEG (compression 7)", "old-style JPEG (OJPEG, compression 6)"."""
    compression = page.compression
    if compression == tifffile.COMPRESSION.OJPEG:
        return f"old-style JPEG (OJPEG, compression {int(compression)})"
    return f"{_name(compression)} (compression {int(compression)})"


def _stack_channels(series: tifffile.TiffPageSeries) -> int:
    """How many images per level the series stacks (channels, planes), 1 for a plain image."""
    count = 1
    for axis, size in zip(series.axes, series.shape, strict=True):
        if axis in _STACK_AXES:
            count *= size
    return count


def _name(value: object) -> str:
    return getattr(value, "name", None) or str(value)
