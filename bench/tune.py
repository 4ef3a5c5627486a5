"""Autotuning: time every config of every kernel an op launches, and persist the winners per GPU.

Each op is run once (forward and backward; the embedding also does a ``max_norm`` lookup on a copy of the
table) inside :func:`triton_embed.tuning.forced_tuning`, so each launcher's ``tuning.choose`` times all its
configs on scratch buffers, whatever the cache already holds. The winners (``tuning.chosen_configs()``)
are merged into the cache file under ``tuning.device_tag()`` (GPU name + Triton version) and the tuning
key (kernel|dtype|dim|token bucket, and a bucket of the table rows for kernels that walk the table), which
the library reads at run time. ``tuning.write_cache`` locks the file and replaces it atomically.
"""
from __future__ import annotations

import torch

import triton_embed
from triton_embed import tuning

from .cases import LAYER_NORM_EPS, MAX_NORM, TABLE_OPS, Case, Inputs


class Tuner:
    """Tunes each (op, dtype, dim, token bucket, row bucket) once per run: the id distribution is not part of
    the key, and the renorm op is tuned with the embedding (its kernels are a subset of the embedding's)."""

    def __init__(self) -> None:
        self.done: set[tuple[str, str, int, int, int]] = set()
        self.written: dict[str, tuning.Config] = {}

    @staticmethod
    def key(case: Case) -> tuple[str, str, int, int, int]:
        """What a tuning run covers: op, dtype, dim, token bucket and (for table ops) row bucket."""
        op = "embedding" if case.op == "renorm" else case.op
        rows = tuning.token_bucket(case.vocab) if case.op in TABLE_OPS else 0
        return (op, case.dtype, case.dim, tuning.token_bucket(case.tokens), rows)

    def needed(self, case: Case) -> bool:
        """Whether this case's key is still to tune in this run."""
        return self.key(case) not in self.done

    def tune(self, case: Case, inputs: Inputs) -> dict[str, tuning.Config]:
        """Tune every kernel the case's op launches; write and return the new choices."""
        self.done.add(self.key(case))
        tuning.forget_choices()  # afterwards, chosen_configs() holds exactly this case's tuned keys
        with tuning.forced_tuning():
            run_op(case, inputs)
        new = tuning.chosen_configs()
        if new:
            tuning.write_cache(new)
            self.written.update(new)
        return new


def run_op(case: Case, inputs: Inputs) -> None:
    """One forward and backward of the op on copies of the inputs (the embedding adds a max_norm lookup)."""
    if case.op == "layer_norm":
        x = inputs.x.detach().clone().requires_grad_(True)
        gamma = inputs.norm_weight.detach().clone().requires_grad_(True)
        beta = inputs.norm_bias.detach().clone().requires_grad_(True)
        out = triton_embed.functional.layer_norm(x, (case.dim,), gamma, beta, LAYER_NORM_EPS)
        out.backward(inputs.grad_out)
        device = x.device
    else:
        weight = inputs.weight.detach().clone().requires_grad_(True)
        device = weight.device
        if case.op == "stable":
            gamma = inputs.norm_weight.detach().clone().requires_grad_(True)
            beta = inputs.norm_bias.detach().clone().requires_grad_(True)
            out = triton_embed.functional.stable_embedding(inputs.ids, weight, gamma, beta)
            out.backward(inputs.grad_out)
        else:
            out = triton_embed.functional.embedding(inputs.ids, weight)
            out.backward(inputs.grad_out)
            with torch.no_grad():
                triton_embed.functional.embedding(inputs.ids, weight.detach().clone(), max_norm=MAX_NORM)
    if device.type == "cuda":
        torch.cuda.synchronize(device)

