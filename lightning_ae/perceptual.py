"""Feature networks of the reconstruction yardsticks, built without torchvision and loaded from the standard weight
files, which the user provides (nothing is downloaded, and nothing falls back to random weights):

* :class:`LPIPS` (Zhang et al. 2018, *The Unreasonable Effectiveness of Deep Features as a Perceptual Metric*,
  arXiv 1801.03924, eq. 1): VGG16's five ReLU stages (torchvision's ``vgg16`` state dict, ``vgg16-397923af.pth``)
  and the published v0.1 linear heads (the ``lpips`` package's ``weights/v0.1/vgg.pth``).
* :class:`InceptionV3Features`: the 2048-d pool features of the TensorFlow FID Inception network (Heusel et al.
  2017) in its PyTorch port, ``pt_inception-2015-12-05-6726825d.pth`` (as pytorch-fid and torchmetrics use).
* :func:`load_feature_network`: any other feature network for a Fréchet distance (a model folder with a
  ``features`` method, such as the CIFAR-10 classifier of ``benchmarks/``, or a TorchScript file).

Every feature network here takes images in ``[0, 1]`` and returns ``(B, D)`` features.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae.configurable import Configurable
from lightning_ae.errors import InputError
from lightning_ae.pretrained import state_dict_mismatch

VGG16_FILE = "vgg16-397923af.pth"
LPIPS_HEADS_FILE = "vgg.pth"  # lpips/weights/v0.1/vgg.pth
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


class WeightsNotFoundError(InputError, FileNotFoundError):
    """A standard weight file that is not on this machine (the message names it and where to put it)."""


class WeightsFileError(InputError, ValueError):
    """A weight file that is not the network it should hold (wrong keys or shapes, or not a state dict)."""


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (``TORCH_HOME`` defaulting to ``~/.cache/torch``), where torchvision keeps
    downloaded weights."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def _lpips_package_heads() -> Path | None:
    """``lpips/weights/v0.1/vgg.pth`` of an installed ``lpips`` package, found without importing it (it imports
    torchvision)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / LPIPS_HEADS_FILE


def weight_file(given: str | Path | None, default: Path | None, what: str, hint: str) -> Path:
    """The path of a weight file: ``given``, else ``default``; a missing file is one :class:`WeightsNotFoundError`
    line naming the file and where to put it."""
    path = Path(given).expanduser() if given is not None else default
    if path is None or not path.is_file():
        shown = path if path is not None else what
        raise WeightsNotFoundError(f"{what} weights not found: {shown} does not exist; {hint} (no weights are "
                                   "downloaded, and none are made up)")
    return path


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` file (``weights_only=True``: a pickle that would run code is refused) or a
    ``.safetensors`` file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same one-line error
        raise WeightsFileError(f"{path} is not a readable {what} state dict: {' '.join(str(err).split())[:200]}"
                               ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"{path} does not hold a {what} state dict (a dict of tensors)")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``module.load_state_dict(state)``, every mismatch one :class:`WeightsFileError` line naming the file."""
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        raise WeightsFileError(f"{path} is not the {what}: {problem}")
    module.load_state_dict(state)


# ---- LPIPS ------------------------------------------------------------------------------------
VGG16_CONVS = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
               (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512)]
LPIPS_STAGES = (3, 8, 15, 22, 29)  # indices in torchvision's vgg16.features of relu1_2, 2_2, 3_3, 4_3, 5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` (same parameter names, ``features.<i>``), returning the activations after
    relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for spec in VGG16_CONVS:
            layers += [nn.MaxPool2d(2, 2)] if spec == "M" else [nn.Conv2d(*spec, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_STAGES:
                out.append(x)
        return out


def lpips_distance(features_a: list[torch.Tensor], features_b: list[torch.Tensor], heads: list[torch.Tensor]
                   ) -> torch.Tensor:
    """LPIPS from the two images' feature stacks (Zhang et al. 2018, eq. 1): per stage ``l``, unit-normalise each
    position's channel vector, square the difference, weight the channels by ``w_l`` (the linear head), average
    over positions; sum over stages. ``heads`` are ``(C_l,)`` weights; returns ``(B,)``."""
    total = 0.0
    for fa, fb, w in zip(features_a, features_b, heads, strict=True):
        na = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        total = total + ((na - nb).pow(2) * w.view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
    return total  # type: ignore[return-value]


class LPIPS(Configurable, nn.Module):
    """The LPIPS distance with VGG16 (v0.1): images in ``[0, 1]`` ``(B, 3, H, W)`` -> ``(B,)`` (lower is closer).

    Inputs are mapped to ``[-1, 1]`` and shifted and scaled as the ``lpips`` package does before VGG16. The
    weights are read from the standard files when it is built (a missing file is one line naming it; there is no
    untrained fallback), so ``perceptual: {class_path: lightning_ae.perceptual.LPIPS}`` in a config is the real
    metric.

    Args:
        vgg: torchvision's VGG16 state dict (default ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``).
        heads: the v0.1 linear heads (default: the installed ``lpips`` package's ``weights/v0.1/vgg.pth``).

    Raises:
        WeightsNotFoundError: a missing file, named with where to put it.
        WeightsFileError: a file that is not the network.
    """

    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, vgg: str | None = None, heads: str | None = None) -> None:
        super().__init__()
        self.net = VGG16Features()
        self.heads = nn.ParameterList(nn.Parameter(torch.ones(c)) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self._load(vgg, heads)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg: str | Path | None = None, heads: str | Path | None = None) -> LPIPS:
        """``LPIPS(vgg, heads)``."""
        return cls(None if vgg is None else str(vgg), None if heads is None else str(heads))

    def _load(self, vgg: str | None, heads: str | None) -> None:
        model = self
        vgg_path = weight_file(vgg, torch_hub_checkpoints() / VGG16_FILE, "LPIPS' VGG16",
                               f"put torchvision's {VGG16_FILE} there or pass its path")
        state = {k.removeprefix("features."): v for k, v in read_state_dict(vgg_path, "VGG16").items()
                 if k.startswith("features.")}
        load_strict(model.net.features, state, vgg_path, "torchvision VGG16")
        heads_path = weight_file(heads, _lpips_package_heads(), "LPIPS' v0.1 linear heads",
                                 "pass the lpips package's weights/v0.1/vgg.pth (pip install lpips --no-deps)")
        raw = read_state_dict(heads_path, "LPIPS heads")
        for i, c in enumerate(LPIPS_CHANNELS):
            key = f"lin{i}.model.1.weight"
            if key not in raw or raw[key].numel() != c:
                raise WeightsFileError(f"{heads_path} is not LPIPS' v0.1 VGG heads: {key} ({c} weights) is missing")
            model.heads[i].data.copy_(raw[key].flatten())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) x 2 in [0, 1] -> (B,)
        fa, fb = (self.net(((2 * x - 1) - self.shift) / self.scale) for x in (a, b))
        return lpips_distance(fa, fb, list(self.heads))


# ---- the FID Inception network ------------------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU (torchvision's Inception unit; ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:  # the FID network's average pool (padding excluded from the mean)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = BasicConv2d(cin, 48, 1), BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), dbl,
                          self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = BasicConv2d(cin, 192, 1), BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the last block of the FID network pools by max (``FIDInceptionE_2``), the one before by an
    average that excludes padding (``FIDInceptionE_1``)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3), self.branch3x3dbl_3a(d),
                          self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class InceptionV3Features(nn.Module):
    """The FID Inception network up to its 2048-d average pool: images in ``[0, 1]`` ``(B, 3, H, W)`` are resized
    to 299x299 (bilinear), mapped to ``[-1, 1]`` and return ``(B, 2048)`` features.

    The parameter names are torchvision's ``Inception3`` (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b...``), as in
    ``pt_inception-2015-12-05-6726825d.pth``; that file's ``fc`` (1008 classes) is not used. Build it with
    :meth:`from_file`.
    """

    FEATURES = 2048

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> InceptionV3Features:
        """The network with the FID weights (default ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d
        .pth``, where pytorch-fid and torchmetrics keep them).

        Raises:
            WeightsNotFoundError: a missing file, named with where to put it.
            WeightsFileError: a file that is not the FID Inception network.
        """
        model = cls()
        file = weight_file(path, torch_hub_checkpoints() / INCEPTION_FILE, "FID InceptionV3",
                           f"put {INCEPTION_FILE} (pytorch-fid's release file) there or pass its path")
        state = {k: v for k, v in read_state_dict(file, "FID Inception").items() if not k.startswith("fc.")}
        load_strict(model, state, file, "FID InceptionV3 network")
        return model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, 2048)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


# ---- any feature network ------------------------------------------------------------------------------------
class ModelFeatures(nn.Module):
    """A model's ``features`` method as a feature network on ``[0, 1]`` images: they are mapped to the model's
    ``pixel_range`` first (a model folder's classifier was trained on its own range)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(model, "features", None)):
            raise WeightsFileError(f"{type(model).__name__} has no features() method to measure a Fréchet distance on")
        self.model = model.eval().requires_grad_(False)
        self.low, self.high = getattr(model, "pixel_range", (0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(self.low + (self.high - self.low) * x).flatten(1)


def load_feature_network(source: str | Path | nn.Module | None = None) -> nn.Module:
    """The feature network of a Fréchet distance: ``None`` or ``"inception"`` (:class:`InceptionV3Features` from
    its default file), a ``.pth`` file (the FID Inception weights), a TorchScript file (``.pt`` / ``.ts`` /
    ``.torchscript``: ``[0, 1]`` images -> ``(B, D)``), a model folder or checkpoint whose model has ``features``
    (:class:`ModelFeatures`), or an ``nn.Module`` returned as it is.

    Raises:
        WeightsNotFoundError / WeightsFileError: one line naming the file.
    """
    if isinstance(source, nn.Module):
        return source
    if source is None or str(source) == "inception":
        return InceptionV3Features.from_file()
    path = Path(source).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"feature network {path} does not exist (a model folder, a checkpoint, a "
                                   "TorchScript file, or 'inception')")
    if path.suffix == ".pth":
        return InceptionV3Features.from_file(path)
    if path.suffix in (".pt", ".ts", ".torchscript"):
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as err:
            raise WeightsFileError(f"{path} is not a TorchScript file: {' '.join(str(err).split())[:160]}") from None
    from lightning_ae.pretrained import load_model

    return ModelFeatures(load_model(str(path)))


FeatureNetwork = Callable[[torch.Tensor], torch.Tensor]
