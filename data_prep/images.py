"""Validate, repair and (optionally) re-encode one image, cheaply when nothing needs doing.

The default path keeps the original JPEG bytes: it parses the header (format, mode, size) and checks
that the file ends with the JPEG end-of-image marker, which catches truncated downloads without a full
decode. Anything else - CMYK or greyscale JPEGs, PNGs (or other formats) disguised as .JPEG - is decoded
and re-encoded as an RGB JPEG. Files that cannot be decoded raise `Rejected` with the reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional, Tuple

DEFAULT_FIX_QUALITY = 95  # quality used when a quirk forces a re-encode and --quality is not given
DEFAULT_REENCODE_QUALITY = 90
_JPEG_EOI = b"\xff\xd9"


class Rejected(Exception):
    """The input is not a usable image; args[0] is the human-readable reason."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Encoding:
    """How images are written: original bytes (max_side and quality None) or re-encoded JPEG."""

    max_side: Optional[int] = None
    quality: Optional[int] = None

    @property
    def reencode(self) -> bool:
        return self.max_side is not None or self.quality is not None


def _open(data: bytes):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise Rejected("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
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


def _encode_jpeg(img, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _to_rgb(img):
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Flatten transparency onto white rather than letting convert() turn it black.
        from PIL import Image

        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, CMYK (PIL inverts Adobe CMYK correctly), P, I;16, ...


def prepare_jpeg(data: bytes, encoding: Encoding = Encoding()) -> Tuple[bytes, Optional[str]]:
    """Return (RGB JPEG bytes, what was fixed or None) for the encoded image `data`; raise Rejected.

    Without re-encoding, a complete RGB JPEG is returned unchanged (same bytes)."""
    img = _open(data)
    fmt, mode = img.format, img.mode
    fix: Optional[str] = None
    if fmt != "JPEG":
        fix = f"{fmt or 'unknown'} image re-encoded as JPEG"
    elif mode != "RGB":
        fix = f"{mode} JPEG converted to RGB"
    if fix is None and not encoding.reencode:
        if _jpeg_complete(data):
            return data, None
        # No EOI marker: either truncated (reject) or trailing bytes after it (keep) - decode to know.
        _load(img, "JPEG")
        return data, None
    if encoding.max_side is not None and fmt == "JPEG":
        # Draft mode lets libjpeg decode at 1/2, 1/4, 1/8 scale: much cheaper when shrinking a lot.
        scale = encoding.max_side / max(img.size)
        if scale < 1:
            img.draft("RGB", (int(img.size[0] * scale) + 1, int(img.size[1] * scale) + 1))
    _load(img, fmt or "image")
    rgb = _to_rgb(img)
    if encoding.max_side is not None and max(rgb.size) > encoding.max_side:
        from PIL import Image

        scale = encoding.max_side / max(rgb.size)
        size = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
        rgb = rgb.resize(size, Image.BICUBIC)
    quality = encoding.quality or (DEFAULT_REENCODE_QUALITY if encoding.reencode else DEFAULT_FIX_QUALITY)
    return _encode_jpeg(rgb, quality), fix


def encode_png(pixels: bytes, height: int = 32, width: int = 32) -> bytes:
    """Losslessly encode raw HxWx3 uint8 RGB `pixels` as PNG (deterministic for equal input)."""
    from PIL import Image

    img = Image.frombytes("RGB", (width, height), pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def small_rgb(data: bytes, side: int = 64):
    """Decode `data` to a small RGB uint8 array (JPEG draft mode: cheap) for pixel statistics."""
    import numpy as np

    img = _open(data)
    if img.format == "JPEG":
        img.draft("RGB", (side, side))
    return np.asarray(_to_rgb(_load(img, img.format or "image")))
