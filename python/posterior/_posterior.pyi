"""Type stubs of the compiled module (see ``posterior/__init__.py`` for the conventions)."""

from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = npt.ArrayLike
Array = npt.NDArray[np.float32]
Noise = Union[None, float, str]

class Operator:
    """A forward model ``y = A(x)`` between float32 arrays: linear with its exact adjoint,
    or nonlinear with a VJP. ``apply`` acts on ``domain_shape`` (for MRI the complex image
    ``(2, H, W)``); ``measure`` takes an image of ``image_shape``."""

    @staticmethod
    def mri(maps: ArrayLike, mask: ArrayLike, complex_image: bool = False) -> Operator:
        """SENSE MRI with coil maps ``(coils, H, W)`` (complex) and a mask ``(H, W)`` (bool, or 0/1);
        the image is real ``(1, H, W)`` (zero phase) unless ``complex_image``."""
    @staticmethod
    def inpaint(mask: ArrayLike, channels: int = 1) -> Operator:
        """Keeps the pixels where ``mask`` ``(H, W)`` (bool or numbers) is true / non-zero."""
    @staticmethod
    def blur(kernel: ArrayLike, image_shape: Sequence[int], boundary: str = "circular") -> Operator:
        """Blur by ``kernel`` ``(kh, kw)``; boundary ``"circular"``, ``"reflect"`` or ``"valid"``."""
    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> str:
        """The spec it was built from (a description for operators built from arrays)."""
    @property
    def domain_shape(self) -> List[int]: ...
    @property
    def range_shape(self) -> List[int]: ...
    @property
    def image_shape(self) -> List[int]:
        """The shape ``(C, H, W)`` of the images ``measure`` takes."""
    @property
    def is_linear(self) -> bool: ...
    def apply(self, x: ArrayLike) -> Array:
        """``A x`` for ``x`` of ``domain_shape``."""
    def adjoint(self, y: ArrayLike) -> Array:
        """``A^T y`` for ``y`` of ``range_shape`` (linear operators)."""
    def normal(self, x: ArrayLike) -> Array:
        """``A^T A x`` (linear operators)."""
    def vjp(self, x: ArrayLike, v: ArrayLike) -> Array:
        """``J_A(x)^T v`` (``A^T v`` for a linear operator)."""
    def adjoint_test(self, seed: int = 0) -> float:
        """``max |<Ax, y> - <x, A^T y>| / (|Ax| |y|)`` over seeded random pairs (~1e-7)."""
    def norm(self, iters: int = 30, seed: int = 0) -> float:
        """``||A||_2`` by power iterations on ``A^T A``."""
    def measure(self, image: ArrayLike, noise: Noise = None, seed: int = 0) -> Array:
        """``A(image)`` plus noise drawn from ``seed``, as ``posterior degrade`` does."""

def operator(
    spec: str, image_shape: Sequence[int], seed: int = 0, base_dir: Union[str, PathLike] = "."
) -> Operator:
    """The operator ``posterior degrade --op SPEC --seed SEED`` builds for images of
    ``image_shape`` ``(C, H, W)`` (``posterior ops`` lists the specs)."""

class PriorInfo:
    """Name, intensity range, sample shape ``(C, H, W)`` and noising path of a prior."""

    name: str
    range: Tuple[float, float]
    shape: List[int]
    schedule: str

class Prior:
    """A diffusion prior: a denoiser on a noising path, with its range and sample shape."""

    @staticmethod
    def open(name: str, device: str = "cpu") -> Prior:
        """A shipped prior (``"brain-mri"``, ``"ct-ellipses"``, ``"fmnist-32"``) or a prior
        directory, on ``"cpu"``, ``"cuda"`` or ``"auto"``."""
    @property
    def info(self) -> PriorInfo: ...
    def denoise(self, x_t: ArrayLike, t: float) -> Array:
        """Tweedie's estimate of ``x_t`` ``(N, C, H, W)`` or ``(C, H, W)`` at time ``t`` in [0, 1]."""
    def vjp(self, x_t: ArrayLike, t: float, v: ArrayLike) -> Array:
        """``v^T d x0_hat / d x_t`` at ``(x_t, t)``, ``v`` shaped like ``x_t``."""

class CallablePrior(Prior):
    """Your denoiser as a prior. ``f(x_t, t)`` takes a float32 batch ``(N, C, H, W)`` and a
    float ``t`` in [0, 1] and returns ``x0_hat`` (same shape, in ``range``); ``vjp(x_t, t,
    v)`` returns ``v^T d x0_hat / d x_t`` (or ``(x0_hat, product)``) and is needed by DPS,
    SMC and TDS. ``schedule``: ``"linear"`` (VP, betas 1e-4..0.02 over ``steps``),
    ``"cosine"``, ``"ve"``, ``"flow"``."""

    def __init__(
        self,
        f: Callable[[Array, float], Any],
        shape: Sequence[int],
        schedule: str = "linear",
        steps: int = 1000,
        range: Tuple[float, float] = (-1.0, 1.0),
        vjp: Optional[Callable[[Array, float, Array], Any]] = None,
        name: str = "callable",
    ) -> None: ...

class Result:
    """A reconstruction, in the measurement's image units."""

    image: Array
    std: Optional[Array]
    particles: Optional[Array]
    nfe: int
    vjps: int
    seconds: float
    label: str
    image_range: Tuple[float, float]
    stopped_early: bool

def reconstruct(
    y: ArrayLike,
    A: Operator,
    *,
    method: Optional[str] = None,
    sampler: Optional[str] = None,
    prior: Union[None, str, Prior] = None,
    steps: Optional[int] = None,
    seed: int = 0,
    noise: Noise = None,
    image_range: Optional[Tuple[float, float]] = None,
    samples: int = 1,
    particles: Optional[int] = None,
    settings: Optional[Dict[str, Union[float, bool]]] = None,
    iters: Optional[int] = None,
    lambda_: Optional[float] = None,
    filter: str = "ramp",
    nonnegative: bool = False,
    device: str = "auto",
    keep_complex: bool = False,
    time_limit: Optional[float] = None,
) -> Result:
    """Reconstructs ``y`` measured by ``A``: a classical ``method`` (``"adjoint"``, ``"cg"``,
    ``"tv"``, ``"fbp"``, ``"gd"``, ``"hio"``, ``"lbfgs"``) or a posterior ``sampler``
    (``"dps"``, ``"reddiff"``, ``"flair"``, ``"dds"``, ``"smc"``, ``"tds"``, ``"fps"``) with
    a ``prior``. The same request gives the CLI's numbers at the same seed."""

def bench(
    suite: Union[str, PathLike],
    out: Union[str, PathLike],
    methods: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Runs a benchmark suite into ``out`` (a rerun resumes); returns its records."""
