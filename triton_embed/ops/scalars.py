"""Float arguments for kernels, passed exactly (see ``kernels/numerics.py``)."""
from __future__ import annotations

import struct


def float_bits(value: float) -> int:
    """The float64 ``value`` as the signed int64 with the same bits, for a kernel's ``_exact_float``.

    >>> float_bits(1.0) == 0x3FF0000000000000
    True
    """
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]
