"""posterior: reconstruct images from degraded measurements with diffusion priors.

Forward operators (blur, inpainting, super-resolution, multi-coil MRI, CT, phase
retrieval), classical reconstructions, and posterior samplers (DPS, RED-diff, FLAIR,
DDS, SMC/TDS/FPS) with a diffusion prior: a shipped network, an imported checkpoint, or
your own denoiser (a PyTorch model) through ``CallablePrior``.

>>> import numpy as np, posterior
>>> A = posterior.operator("mri:coils=8,accel=4", image_shape=(1, 64, 64), seed=3)
>>> x = np.random.rand(1, 64, 64).astype(np.float32)
>>> y = A.measure(x, noise="complex-gaussian:sigma=0.005", seed=3)
>>> r = posterior.reconstruct(y, A, sampler="dds", prior="brain-mri", steps=20,
...                           noise="complex-gaussian:sigma=0.005")
>>> r.image.shape, r.nfe
((1, 64, 64), 20)

Conventions: float32 arrays (float64 is converted); an image is ``(C, H, W)``, a batch
``(N, C, H, W)``; complex data is a leading ``(re, im)`` pair (a complex image is
``(2, H, W)``, multi-coil k-space ``(coils, 2, H, W)``) and complex64/complex128 arrays
are accepted and split that way; arrays must be C-contiguous and finite. Errors: bad
input raises ``ValueError``, files ``OSError``, the GPU ``RuntimeError``; Ctrl-C stops a
reconstruction with ``KeyboardInterrupt``.
"""

from ._posterior import (
    CallablePrior,
    Operator,
    Prior,
    PriorInfo,
    Result,
    __version__,
    bench,
    operator,
    reconstruct,
)

__all__ = [
    "CallablePrior",
    "Operator",
    "Prior",
    "PriorInfo",
    "Result",
    "__version__",
    "bench",
    "operator",
    "reconstruct",
]
