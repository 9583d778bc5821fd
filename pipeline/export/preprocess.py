"""What a trained net expects of an image, written beside its weights: the run's evaluation views and
normalisation, as data a user of the export reads, and as the code that applies them here (`predict`).

The views are the evaluation loader's own (`pipeline.data.evaluation_views`): ImageNet-style nets take the
shorter side resized to `resize_shorter`, then the central `input_size` square (or Table 3's ten crops);
CIFAR-style nets take their 32x32 image as is, and any other image with its shorter side resized to 32 and the
central square. Pixels are RGB on the 0-255 scale, NCHW; then `(x - mean) / std`, where `mean` is the per-pixel
mean image when the view has its size (the paper's "per-pixel mean subtracted") and a per-channel mean otherwise.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.augment import Finish, Geometry
from pipeline.data.torch_loader import decode_view

PROTOCOLS = ("center", "tencrop")  # what one image can be scored with here (multiscale is Table 4's, per split)


@dataclass(frozen=True, eq=False)
class Preprocess:
    input_size: int  # the side of the square view the net was evaluated on
    resize_shorter: int  # the shorter side before the central crop
    crop: str  # "center" (ImageNet-style) | "none" (CIFAR-style: the image is the view)
    normalize: str  # per_pixel_mean | per_channel (the run's data.normalize)
    mean: tuple[float, float, float]  # per channel, 0-255: subtracted from views without the mean image's size
    std: tuple[float, float, float]  # 1 for the paper's per-pixel mean
    mean_image: np.ndarray | None = field(default=None, repr=False)  # float32 HxWx3, 0-255, for views of its size

    @classmethod
    def of_evaluation(cls, geometry: Geometry, finish: Finish, normalize: str, input_size: int) -> Preprocess:
        """The evaluation loader's views (`geometry`) and normalisation (`finish`) as a description."""
        image = None
        if finish.mean_image is not None and tuple(finish.mean_image.shape[1:]) == (input_size, input_size):
            image = finish.mean_image.permute(1, 2, 0).numpy().astype(np.float32)  # the only size it applies to
        crop = "none" if geometry.kind == "none" else "center"
        resize = input_size if crop == "none" else geometry.resize_min
        return cls(input_size, resize, crop, normalize, tuple(finish.mean.tolist()), tuple(finish.std.tolist()),
                   image)

    # -- as data -----------------------------------------------------------------------------------------

    def to_json(self, mean_image_file: str | None) -> dict:
        views = (f"the RGB image resized so that its shorter side is {self.resize_shorter} (bilinear), then its "
                 f"central {self.input_size}x{self.input_size} square" if self.crop == "center" else
                 f"the {self.input_size}x{self.input_size} RGB image as is (another size: its shorter side resized "
                 f"to {self.input_size}, then the central square)")
        subtract = (f"the mean image ({mean_image_file}, HxWx3)" if self.mean_image is not None else
                    "the per-channel mean")
        return {"input_size": self.input_size, "resize_shorter": self.resize_shorter, "crop": self.crop,
                "channel_order": "RGB", "value_range": [0, 255], "layout": "NCHW", "normalize": self.normalize,
                "mean": list(self.mean), "std": list(self.std), "mean_image": mean_image_file,
                "views": views, "formula": f"(x - {subtract}) / std, x in 0-255"}

    @classmethod
    def from_json(cls, data: dict, folder: Path) -> Preprocess:
        image = None
        if data.get("mean_image"):
            image = np.load(folder / data["mean_image"]).astype(np.float32)
        return cls(int(data["input_size"]), int(data["resize_shorter"]), str(data["crop"]), str(data["normalize"]),
                   tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]), image)  # type: ignore[arg-type]

    # -- as code -----------------------------------------------------------------------------------------

    def geometry(self, protocol: str = "center", size: tuple[int, int] | None = None) -> Geometry:
        """The views of one image of `size` (width, height) under `protocol` (center or tencrop)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: one image is scored with {' or '.join(PROTOCOLS)}")
        if self.crop == "none":
            if protocol != "center":
                raise ValueError(f"a {self.input_size}x{self.input_size} (CIFAR-style) net has one view per image: "
                                 "use the center protocol")
            if size == (self.input_size, self.input_size):
                return Geometry("none", 0)
        kind = "tencrop" if protocol == "tencrop" else "center"
        return Geometry(kind, self.input_size, self.resize_shorter, max(self.resize_shorter, 480))

    def views(self, image: bytes | Path | str, protocol: str = "center") -> torch.Tensor:
        """uint8 (views, H, W, 3) of an encoded image or an image file: 1 view, or 10 for tencrop."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        with Image.open(io.BytesIO(data)) as probe:
            size = probe.size
        geometry = self.geometry(protocol, size)
        out = decode_view(data, geometry, np.random.default_rng(0))  # evaluation views draw nothing
        return torch.from_numpy(np.array(out)).reshape(-1, *np.shape(out)[-3:])  # a copy: PIL's arrays are read-only

    def finish(self) -> Finish:
        """The evaluation loader's normalisation, rebuilt from this description."""
        image = None if self.mean_image is None else torch.from_numpy(self.mean_image).permute(2, 0, 1).contiguous()
        return Finish(mean=torch.tensor(self.mean, dtype=torch.float32),
                      std=torch.tensor(self.std, dtype=torch.float32), mean_image=image)

    def normalise(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC views -> the float32 NCHW the net takes."""
        return self.finish()(views, None)


class Normalised(torch.nn.Module):
    """The net with its normalisation in front: it takes RGB pixels on the 0-255 scale, float NCHW, of the view's
    size (what the ONNX export takes, so that it needs no mean image beside it)."""

    def __init__(self, net: torch.nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.net = net
        if preprocess.mean_image is not None:
            mean = torch.from_numpy(preprocess.mean_image).permute(2, 0, 1).unsqueeze(0)
        else:
            mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean.float().contiguous())
        self.register_buffer("inv_std", (1.0 / torch.tensor(preprocess.std, dtype=torch.float32)).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels - self.mean) * self.inv_std)
