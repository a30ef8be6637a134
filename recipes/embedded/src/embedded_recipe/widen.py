"""Start a wider QuartzNet from a trained narrower one without losing what it learned (Net2WiderNet).

Every channel of the narrow model is repeated `k` times (wide channel j is narrow channel j mod C);
a convolution that reads widened channels divides its weights by `k`, because each input now arrives
`k` times. Depthwise kernels, biases and BatchNorm statistics are repeated as they are. The wide
model then computes exactly the narrow model's function; a little noise on the weights breaks the
symmetry between the copies, which identical gradients would otherwise keep forever.
"""

from __future__ import annotations

import torch

from nemo_ptq.errors import ConfigError


def _factor(wide: int, narrow: int, name: str) -> int:
    if wide % narrow:
        raise ConfigError(f"cannot widen {name}: {wide} channels is not a multiple of {narrow}; "
                          "init_from must be the same architecture at an integer fraction of the width")
    return wide // narrow


def widened_state_dict(narrow: dict[str, torch.Tensor], wide: dict[str, torch.Tensor], *,
                       noise: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """`narrow`'s weights laid out in `wide`'s shapes (same keys); `noise` is relative to each tensor's std."""
    missing = set(wide) ^ set(narrow)
    if missing:
        raise ConfigError(f"cannot widen: the two models differ in layers ({sorted(missing)[:3]} ...); "
                          "init_from must be the same architecture at another width")
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, target in wide.items():
        value = narrow[name]
        if value.dim() != target.dim():
            raise ConfigError(f"cannot widen {name}: shapes {tuple(value.shape)} and {tuple(target.shape)}")
        for dim, (w, n) in enumerate(zip(target.shape, value.shape, strict=True)):
            if w == n:
                continue
            k = _factor(w, n, name)
            value = value.repeat(*[k if d == dim else 1 for d in range(value.dim())])
            # A convolution's dim 1 is its input channels: k copies of each input, so 1/k of each weight.
            if dim == 1 and value.dim() == 3:
                value = value / k
        if noise and value.is_floating_point() and value.dim() == 3 and value.shape != narrow[name].shape:
            value = value + noise * value.std() * torch.randn(value.shape, generator=generator)
        result[name] = value.to(target.dtype)
    return result
