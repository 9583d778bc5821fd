"""Validate, repair and (optionally) re-encode one image, cheaply when nothing needs doing.

The default path keeps the original JPEG bytes: it parses the header (format, mode, size) and checks
that the file ends with the JPEG end-of-image marker, which catches truncated downloads without a full
decode. The common case - an 8-bit 3-component JPEG ending in EOI - is recognised by a byte-level walk of
the header segments (`is_plain_rgb_jpeg`) without PIL; every other file takes PIL's path, so the outcome
is the same either way. Anything else - CMYK or greyscale JPEGs, PNGs (or other formats) disguised as .JPEG - is decoded
and re-encoded as an RGB JPEG. Files that cannot be decoded raise `Rejected` with the reason.

Pixel limit: an image above `Encoding.max_pixels` (default 40 MP, well above ILSVRC-2012's largest photos)
is shrunk to fit (aspect kept, JPEG draft mode so a huge JPEG is never decoded at full size) and
re-encoded; the fix names both sizes. PIL's own decompression-bomb check (a warning above ~89 MP, an
error above ~179 MP) is not left to chance: its warning is silenced because the limit here decides, and
its error - an image PIL refuses to decode at all, which no loader could read either - is a rejection
with that reason, also when the limit is off (max_pixels 0).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_FIX_QUALITY = 95  # quality used when a quirk forces a re-encode and --quality is not given
DEFAULT_REENCODE_QUALITY = 90
DEFAULT_MAX_PIXELS = 40_000_000  # ILSVRC-2012's largest train images are ~4000-5000 px on a side (< 25 MP)
_JPEG_EOI = b"\xff\xd9"


class Rejected(Exception):
    """The input is not a usable image; args[0] is the human-readable reason."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Encoding:
    """How images are written: original bytes (max_side and quality None) or re-encoded JPEG; either way
    an image above `max_pixels` (0: no limit) is shrunk to fit."""

    max_side: int | None = None
    quality: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def reencode(self) -> bool:
        return self.max_side is not None or self.quality is not None


def _open(data: bytes):
    if not data:
        raise Rejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Above ~89 MP PIL only warns; the pixel limit (Encoding.max_pixels) decides what happens instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise Rejected(f"too large to decode safely (PIL's decompression-bomb limit): {e}") from None
    except UnidentifiedImageError:
        raise Rejected("not an image (format not recognised)") from None
    except Exception as e:  # corrupt headers raise assorted errors inside PIL
        raise Rejected(f"unreadable image header: {e}") from None


def _load(img, what: str):
    try:
        img.load()
    except Exception as e:  # truncated data raises OSError; corrupt data raises assorted errors
        raise Rejected(f"corrupt or truncated {what}: {e}") from None
    return img


def _jpeg_complete(data: bytes) -> bool:
    # Some encoders pad after EOI; strip NUL padding before looking for the marker.
    return data.rstrip(b"\x00").endswith(_JPEG_EOI)


# Markers the fast check walks over: APP0-15, COM, DQT, DHT, DRI. SOF0-2 (baseline, extended, progressive
# Huffman) define the frame; SOS ends the header. Anything else (other SOFs, DNL, DAC, fill bytes, junk) is
# left to PIL.
_SKIPPABLE = frozenset([*range(0xE0, 0xF0), 0xFE, 0xDB, 0xC4, 0xDD])
_SOF_FAST = frozenset([0xC0, 0xC1, 0xC2])


def is_plain_rgb_jpeg(data: bytes, max_pixels: int = 0) -> bool:
    """True when `data` is certainly what `prepare_jpeg` keeps unchanged without decoding: a JPEG (not an
    MPO) whose header PIL parses to an 8-bit, 3-component (RGB) frame, ending with the EOI marker, and
    with at most `max_pixels` pixels (0: no limit of its own).

    A byte-level walk of the header segments (a few microseconds, against ~60 us for PIL's parse); it
    answers False whenever it is not sure, and the caller then takes PIL's path, so the outcome for every
    file is what PIL's parse alone gives - only faster for the common case."""
    if not data.startswith(b"\xff\xd8\xff") or not data.endswith(_JPEG_EOI):
        return False
    n = len(data)
    i = 2
    frame = False
    limit = min(max_pixels, _FAST_MAX_PIXELS) if max_pixels else _FAST_MAX_PIXELS
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        m = data[i + 1]
        length = (data[i + 2] << 8) | data[i + 3]
        end = i + 2 + length
        if length < 2 or end > n:
            return False
        if m == 0xDA:  # start of scan: the header is complete
            return frame
        if m in _SOF_FAST:
            # SOF: precision, height, width, components (then 3 bytes per component).
            if frame or length < 8 or data[i + 4] != 8 or data[i + 9] != 3 or length < 8 + 3 * 3:
                return False
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            if not height or not width or width * height > limit:
                return False
            frame = True
        elif m not in _SKIPPABLE:
            return False
        elif m == 0xDB:  # DQT: PIL rejects a table shorter than its precision says
            j = i + 4
            while j < end:
                j += 1 + (64 if data[j] < 16 else 128)
            if j != end:
                return False
        elif 0xE0 <= m <= 0xEF:
            body = data[i + 4:i + 18]
            if m == 0xE2 and body.startswith(b"MPF\x00"):  # multi-picture: PIL opens it as MPO
                return False
            if m == 0xE1 and body.startswith(b"Exif\x00\x00") or m == 0xED and body.startswith(b"Photoshop 3.0"):
                return False  # PIL parses these further (EXIF dpi, resource blocks): let it decide
            if (m == 0xE0 and body.startswith(b"JFIF") or m == 0xEE and body.startswith(b"Adobe")) \
                    and length - 2 < 7:  # PIL reads a 16-bit field at offset 5 of these
                return False
        i = end
    return False


# Below PIL's decompression-bomb warning threshold (89.5 MP); larger frames take PIL's path.
_FAST_MAX_PIXELS = 64_000_000


def _encode_jpeg(img, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _to_rgb(img):
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Flatten transparency onto white rather than letting convert() turn it black.

        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, CMYK (PIL inverts Adobe CMYK correctly), P, I;16, ...


def fit_pixels(size: tuple[int, int], max_pixels: int) -> tuple[int, int] | None:
    """The largest size with the aspect of `size` and at most `max_pixels` pixels; None when `size` fits
    (or max_pixels is 0: no limit)."""
    w, h = size
    if not max_pixels or w * h <= max_pixels:
        return None
    scale = math.sqrt(max_pixels / (w * h))
    return max(1, int(w * scale)), max(1, int(h * scale))  # rounded down: the product stays <= the limit


def _draft_size(size: tuple[int, int], encoding: Encoding) -> tuple[int, int] | None:
    """The smallest decode size any resize below needs (JPEG draft mode), or None when nothing shrinks."""
    want = None
    if encoding.max_side is not None and encoding.max_side < max(size):
        scale = encoding.max_side / max(size)
        want = (int(size[0] * scale) + 1, int(size[1] * scale) + 1)
    fit = fit_pixels(size, encoding.max_pixels)
    if fit is not None:
        fit = (fit[0] + 1, fit[1] + 1)
        want = fit if want is None else (min(want[0], fit[0]), min(want[1], fit[1]))
    return want


def prepare_jpeg(data: bytes, encoding: Encoding = Encoding()) -> tuple[bytes, str | None]:
    """Return (RGB JPEG bytes, what was fixed or None) for the encoded image `data`; raise Rejected.

    Without re-encoding, a complete RGB JPEG within the pixel limit is returned unchanged (same bytes)."""
    if not encoding.reencode and is_plain_rgb_jpeg(data, encoding.max_pixels):
        return data, None  # what the PIL path below returns for it, without parsing it with PIL
    img = _open(data)
    fmt, mode, size = img.format, img.mode, img.size
    fixes = []
    if fmt != "JPEG":
        fixes.append(f"{fmt or 'unknown'} image re-encoded as JPEG")
    elif mode != "RGB":
        fixes.append(f"{mode} JPEG converted to RGB")
    too_big = fit_pixels(size, encoding.max_pixels) is not None
    if not fixes and not too_big and not encoding.reencode:
        if _jpeg_complete(data):
            return data, None
        # No EOI marker: either truncated (reject) or trailing bytes after it (keep) - decode to know.
        _load(img, "JPEG")
        return data, None
    draft = _draft_size(size, encoding)
    if draft is not None and fmt == "JPEG":
        # Draft mode lets libjpeg decode at 1/2, 1/4, 1/8 scale: much cheaper when shrinking a lot, and a
        # huge JPEG is never held in memory at full size.
        img.draft("RGB", draft)
    _load(img, fmt or "image")
    rgb = _to_rgb(img)

    if encoding.max_side is not None and max(rgb.size) > encoding.max_side:
        scale = encoding.max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale))), Image.BICUBIC)
    fit = fit_pixels(rgb.size, encoding.max_pixels)
    if fit is not None:
        rgb = rgb.resize(fit, Image.BICUBIC)
    if too_big:
        fixes.append(f"{size[0]}x{size[1]} image ({size[0] * size[1] / 1e6:.1f} MP) above the pixel limit "
                     f"(--max-pixels {encoding.max_pixels}): shrunk to {rgb.size[0]}x{rgb.size[1]}")
    quality = encoding.quality or (DEFAULT_REENCODE_QUALITY if encoding.reencode else DEFAULT_FIX_QUALITY)
    return _encode_jpeg(rgb, quality), "; ".join(fixes) or None


def encode_png(pixels: bytes, height: int = 32, width: int = 32) -> bytes:
    """Losslessly encode raw HxWx3 uint8 RGB `pixels` as PNG (deterministic for equal input)."""

    img = Image.frombytes("RGB", (width, height), pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def small_rgb(data: bytes, side: int = 64):
    """Decode `data` to a small RGB uint8 array (JPEG draft mode: cheap) for pixel statistics."""

    img = _open(data)
    if img.format == "JPEG":
        img.draft("RGB", (side, side))
    return np.asarray(_to_rgb(_load(img, img.format or "image")))
