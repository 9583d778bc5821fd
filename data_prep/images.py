"""Validate, repair and (optionally) re-encode one image, cheaply when nothing needs doing.

The default path keeps the original JPEG bytes: it parses the header (format, mode, size) and checks
that the file ends with the JPEG end-of-image marker, which catches truncated downloads without a full
decode. The common case - an 8-bit 3-component JPEG ending in EOI - is recognised by a byte-level walk of
the header segments (`is_plain_rgb_jpeg`) without PIL; every other file takes PIL's path, so the outcome
is the same either way. Anything else - CMYK or greyscale JPEGs, PNGs (or other formats) disguised as .JPEG - is decoded
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


# Markers the fast check walks over: APP0-15, COM, DQT, DHT, DRI. SOF0-2 (baseline, extended, progressive
# Huffman) define the frame; SOS ends the header. Anything else (other SOFs, DNL, DAC, fill bytes, junk) is
# left to PIL.
_SKIPPABLE = frozenset([*range(0xE0, 0xF0), 0xFE, 0xDB, 0xC4, 0xDD])
_SOF_FAST = frozenset([0xC0, 0xC1, 0xC2])


def is_plain_rgb_jpeg(data: bytes) -> bool:
    """True when `data` is certainly what `prepare_jpeg` keeps unchanged without decoding: a JPEG (not an
    MPO) whose header PIL parses to an 8-bit, 3-component (RGB) frame, ending with the EOI marker.

    A byte-level walk of the header segments (a few microseconds, against ~60 us for PIL's parse); it
    answers False whenever it is not sure, and the caller then takes PIL's path, so the outcome for every
    file is what PIL's parse alone gives - only faster for the common case."""
    if not data.startswith(b"\xff\xd8\xff") or not data.endswith(_JPEG_EOI):
        return False
    n = len(data)
    i = 2
    frame = False
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
            if not height or not width or width * height > _FAST_MAX_PIXELS:
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
        from PIL import Image

        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, CMYK (PIL inverts Adobe CMYK correctly), P, I;16, ...


def prepare_jpeg(data: bytes, encoding: Encoding = Encoding()) -> Tuple[bytes, Optional[str]]:
    """Return (RGB JPEG bytes, what was fixed or None) for the encoded image `data`; raise Rejected.

    Without re-encoding, a complete RGB JPEG is returned unchanged (same bytes)."""
    if not encoding.reencode and is_plain_rgb_jpeg(data):
        return data, None  # what the PIL path below returns for it, without parsing it with PIL
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
