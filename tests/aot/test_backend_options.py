"""Launch options per Triton backend: on ROCm (where tensors report ``is_cuda`` and reach the kernels) every
launch passes only options Triton's HIP backend knows, so none can raise the runtime's
``KeyError: Keyword argument maxnreg was specified but unrecognised``; FMA contraction is pinned in every
launch on both backends. The launches are recorded under the interpreter with the backend forced, and
every option is checked against the backend's own options dataclass, as ``triton/runtime/jit.py`` does."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import triton_embed
from triton_embed import functional
from triton_embed.ops import plans, tiles


def _option_fields(backend: str) -> set[str]:
    if backend == "hip":
        from triton.backends.amd.compiler import HIPOptions as options
    else:
        from triton.backends.nvidia.compiler import CUDAOptions as options
    return {f.name for f in dataclasses.fields(options)}


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch of the test as (kernel name, launch options): keywords that are not arguments."""
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    if not triton_embed.interpreter_enabled():
        pytest.skip("records launches under the interpreter")
    seen: list[tuple[str, dict]] = []
    original = interpreter.GridExecutor.__call__

    def call(self, *args, **kwargs):
        seen.append((self.fn.__name__, {k: v for k, v in kwargs.items() if k not in self.arg_names}))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", call)
    return seen


def _run_every_op(device) -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (3, 5), generator=gen).to(device)
    for dtype in (torch.bfloat16,):
        weight = torch.randn(40, 48, generator=gen).to(dtype).to(device).requires_grad_()
        functional.embedding(ids, weight, max_norm=1.0).sum().backward()
        functional.embedding(ids, weight, max_norm=1.0, norm_type=3.0)
        gamma, beta = torch.ones(48, device=device, requires_grad=True), torch.zeros(48, device=device, requires_grad=True)
        functional.stable_embedding(ids, weight, gamma, beta).float().sum().backward()
        x = torch.randn(6, 48, generator=gen).to(dtype).to(device).requires_grad_()
        functional.layer_norm(x, 48, gamma.to(dtype), beta.to(dtype)).float().sum().backward()
    table = torch.randn(40, 48, generator=gen).to(device).requires_grad_()  # float32: the per-id backward
    gamma = torch.ones(48, device=device, requires_grad=True)
    functional.stable_embedding(ids, table, gamma, None).sum().backward()
    for cls in (triton_embed.StableEmbedding8bit, triton_embed.StableEmbedding4bit):
        emb = cls.from_float(torch.nn.Embedding(40, 64)).to(device)
        emb(ids).sum().backward()


@pytest.mark.parametrize("backend", ["hip", "cuda"])
def test_every_launch_passes_options_its_backend_knows(device, launches, monkeypatch, backend):
    monkeypatch.setattr(tiles, "gpu_backend", lambda: backend)
    monkeypatch.setattr(plans, "_plans", {})  # launch plans remember the options of the backend they met
    _run_every_op(device)
    names = {name for name, _ in launches}
    assert {"gather_rows_kernel", "claim_rows_kernel", "renorm_rows_kernel", "layer_norm_fwd_kernel",
            "layer_norm_bwd_kernel", "stable_embedding_fwd_kernel", "stable_embedding_bwd_kernel",
            "stable_embedding_runs_kernel", "embedding_bwd_rows_kernel", "layer_norm_param_grad_kernel",
            "quantized_stable_fwd_kernel", "quantized_stable_bwd_kernel"} <= names, names
    known = _option_fields(backend)
    unknown = {(name, key) for name, options in launches for key in options if key not in known}
    assert not unknown, f"launch options the {backend} backend rejects with a KeyError: {sorted(unknown)}"
    unpinned = sorted({name for name, options in launches if options.get("enable_fp_fusion") is not False})
    assert not unpinned, f"launches that leave FMA contraction to Triton's default: {unpinned}"
    capped = {name for name, options in launches if "maxnreg" in options}
    if backend == "hip":
        assert not capped
    else:  # the register cap the LayerNorm family keeps on CUDA (so the HIP case above is not vacuous)
        assert "layer_norm_fwd_kernel" in capped


def test_rocm_builds_select_the_hip_backend(monkeypatch):
    tiles.gpu_backend.cache_clear()
    try:
        monkeypatch.setattr(torch.version, "hip", "6.4.0", raising=False)
        assert tiles.gpu_backend() == "hip"
        assert "maxnreg" not in tiles.forward_tile({"ELEMS": 4096}, 4096)[1]
        tiles.gpu_backend.cache_clear()
        monkeypatch.setattr(torch.version, "hip", None, raising=False)
        assert tiles.gpu_backend() == "cuda"
        assert tiles.forward_tile({"ELEMS": 4096}, 4096)[1]["maxnreg"] == tiles.MAX_REGISTERS
    finally:
        tiles.gpu_backend.cache_clear()


def test_backend_option_lists_match_triton():
    """``tiles.BACKEND_OPTIONS`` names only fields of Triton's options dataclasses (3.6 through 3.9)."""
    for backend, names in tiles.BACKEND_OPTIONS.items():
        assert names <= _option_fields(backend), (backend, names - _option_fields(backend))
    assert "maxnreg" not in _option_fields("hip")


def test_warps_follow_the_backends_warp_size():
    """64-lane wavefronts on CDNA: as many threads per row as 32-lane warps give (half the warps) while the
    16-warp cap allows; the warps, which set the row sums' layout, depend on the width and backend alone."""
    for dim in (768, 2048, 4096):
        cuda = tiles.forward_tile({"ELEMS": 8192}, dim, backend="cuda")[1]["num_warps"]
        hip = tiles.forward_tile({"ELEMS": 8192}, dim, backend="hip")[1]["num_warps"]
        assert 64 * hip == 32 * cuda, (dim, cuda, hip)
    for dim in (768, 4096, 8192, 20000):
        for backend in ("cuda", "hip"):
            warps = {tiles.forward_tile(c, dim, backend=backend)[1]["num_warps"] for c in tiles.tuning.CONFIGS["layer_norm"]}
            warps |= {tiles.backward_tile(c, dim, backend=backend)[1]["num_warps"]
                      for c in tiles.tuning.CONFIGS["layer_norm_backward"]}
            assert len({tiles.forward_tile(c, dim, backend=backend)[1]["num_warps"]
                        for c in tiles.tuning.CONFIGS["layer_norm"]}) == 1, (dim, backend, warps)
