"""Autotuning: time every config of every kernel an op launches, and persist the winners per GPU.

Each op is run once (forward, atomic backward, deterministic backward, and for the embedding a
``max_norm`` lookup on a copy of the table) inside :func:`triton_embed.tuning.forced_tuning`, so each
launcher's ``tuning.choose`` times all its configs on scratch buffers, whatever the cache already holds.
The winners (``tuning.chosen_configs()``) are merged into the cache file under
``tuning.device_tag()`` (GPU name + Triton version) and ``tuning_key`` (kernel|dtype|dim|token bucket),
which the library reads at run time. ``tuning.write_cache`` locks the file and replaces it atomically.
"""
from __future__ import annotations

import torch

import triton_embed
from triton_embed import tuning

from .cases import Case, Inputs


class Tuner:
    """Tunes each (op, dtype, dim, token bucket) once per run: the id distribution is not part of the key."""

    def __init__(self) -> None:
        self.done: set[tuple[str, str, int, int]] = set()
        self.written: dict[str, tuning.Config] = {}

    @staticmethod
    def key(case: Case) -> tuple[str, str, int, int]:
        """What a tuning run covers: op, dtype, dim and token bucket."""
        return (case.op, case.dtype, case.dim, tuning.token_bucket(case.tokens))

    def needed(self, case: Case) -> bool:
        """Whether this case's key is still to tune in this run."""
        return self.key(case) not in self.done

    def tune(self, case: Case, inputs: Inputs) -> dict[str, tuning.Config]:
        """Tune every kernel the case's op launches; write and return the new choices."""
        self.done.add(self.key(case))
        tuning.forget_choices()  # afterwards, chosen_configs() holds exactly this case's tuned keys
        with tuning.forced_tuning():
            _run_op(case, inputs)
        new = tuning.chosen_configs()
        if new:
            tuning.write_cache(new)
            self.written.update(new)
        return new


def _run_op(case: Case, inputs: Inputs) -> None:
    """One forward and both backward paths of the op (and a max_norm lookup for the embedding)."""
    weight = inputs.weight.detach().clone().requires_grad_(True)
    if case.op == "stable":
        gamma = inputs.norm_weight.detach().clone().requires_grad_(True)
        beta = inputs.norm_bias.detach().clone().requires_grad_(True)
        for deterministic in (False, True):
            out = triton_embed.functional.stable_embedding(
                inputs.ids, weight, gamma, beta, deterministic=deterministic
            )
            out.backward(inputs.grad_out)
    else:
        for deterministic in (False, True):
            out = triton_embed.functional.embedding(inputs.ids, weight, deterministic=deterministic)
            out.backward(inputs.grad_out)
        with torch.no_grad():
            triton_embed.functional.embedding(inputs.ids, weight.detach().clone(), max_norm=1.0)
    if weight.is_cuda:
        torch.cuda.synchronize(weight.device)
