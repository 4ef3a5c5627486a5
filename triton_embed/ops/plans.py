"""What a launcher derives from a tuned config (constexprs, launch options, tile sizes), remembered per config
and shape key instead of recomputed on every call: on a GPU a small call's cost is its host time.

A plan is remembered for the config object it came from (held, and compared by identity), so a new choice
(retuning, :func:`triton_embed.tuning.forget_choices`, a test forcing a config) simply finds no plan and
makes one; configs are never modified in place.

>>> from triton_embed.ops.tiles import forward_tile
>>> config = {"ELEMS": 4096, "num_warps": 8}
>>> plan(forward_tile, config, 768, False) is plan(forward_tile, config, 768, False)
True
>>> cdiv(10, 4), cdiv(0, 4)
(3, 0)
"""
from __future__ import annotations

from typing import Any, Callable

#: Plans kept at most (a handful of configs times the shapes a process meets; cleared when it overflows).
MAX_PLANS = 4096

_plans: dict[tuple, tuple[Any, Any]] = {}


def plan(derive: Callable[..., Any], config: dict, *key: Any) -> Any:
    """``derive(config, *key)``, computed once per (``derive``, ``config`` object, ``key``). The result is
    shared: callers must not modify it."""
    slot = (derive, id(config), key)
    entry = _plans.get(slot)
    if entry is not None and entry[0] is config:
        return entry[1]
    value = derive(config, *key)
    if len(_plans) >= MAX_PLANS:
        _plans.clear()
    _plans[slot] = (config, value)
    return value


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for the host's grid sizes (``triton.cdiv`` is a constexpr function: slower to call)."""
    return -(-a // b)


__all__ = ["plan", "cdiv", "MAX_PLANS"]
