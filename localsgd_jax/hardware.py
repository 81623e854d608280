"""What the project knows of accelerators it did not measure: their peaks.

No JAX here: the report (`report.py`) reads it too.
"""
from typing import Optional

# Dense (no sparsity) peak FLOP/s of the tensor cores, from NVIDIA's
# datasheets, by a substring of jax's device_kind (first match wins) and the
# compute dtype; float32 is held to the TF32 peak, the fastest XLA may use.
_PEAKS = (('H100 PCIe', {'bfloat16': 756e12, 'float32': 378e12}),
          ('H100', {'bfloat16': 989e12, 'float32': 495e12}),
          ('H200', {'bfloat16': 989e12, 'float32': 495e12}),
          ('A100', {'bfloat16': 312e12, 'float32': 156e12}))


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  """The dense peak FLOP/s of `device_kind` in `dtype` (None: not known,
  e.g. CPUs)."""
  for name, peaks in _PEAKS:
    if name in device_kind:
      return peaks.get(dtype)
  return None
