"""triton_embed.parallel on torch.distributed: tensor-parallel styles (rowwise, colwise) for both modules,
the custom ops on DTensors, FSDP2 and DDP training, each against the unsharded module. The ranks are
processes on the CPU (gloo), the kernels run under the interpreter; the cases are in parallel_cases.py."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import parallel_cases

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _spawn(fn, world: int, tmp_path) -> None:
    mp.spawn(fn, args=(world, str(tmp_path / "store")), nprocs=world, join=True)


@pytest.mark.host_only
def test_tensor_parallel_styles_match_the_unsharded_modules(tmp_path):
    _spawn(parallel_cases.tensor_parallel, 2, tmp_path)


@pytest.mark.host_only
def test_custom_ops_take_dtensors(tmp_path):
    _spawn(parallel_cases.functional_dtensors, 2, tmp_path)


@pytest.mark.host_only
def test_fsdp2_and_ddp_training_match_one_process(tmp_path):
    _spawn(parallel_cases.data_parallel, 2, tmp_path)


@pytest.mark.host_only
def test_four_ranks_with_an_empty_shard(tmp_path):
    _spawn(parallel_cases.four_ranks, 4, tmp_path)


@pytest.mark.host_only
def test_a_bad_id_changes_no_shard(tmp_path):
    _spawn(parallel_cases.out_of_range, 2, tmp_path)


def test_styles_refuse_what_they_cannot_shard():
    import triton_embed
    from torch.distributed.tensor import Shard
    from triton_embed.parallel import RowwiseParallel

    with pytest.raises(NotImplementedError, match="output layout"):
        RowwiseParallel(output_layouts=Shard(-1))
    with pytest.raises(NotImplementedError, match="triton_embed.Embedding"):
        RowwiseParallel()._apply(torch.nn.Linear(2, 2), _FakeMesh())
    with pytest.raises(NotImplementedError, match="sparse"):
        RowwiseParallel()._apply(triton_embed.Embedding(4, 2, sparse=True), _FakeMesh())


class _FakeMesh:
    ndim = 1


@pytest.mark.multi_gpu
def test_the_readme_example_runs_under_torchrun(tmp_path):
    """``torchrun --nproc-per-node 2 -m triton_embed.parallel.example`` (the README's command), on the CPU."""
    import subprocess
    import sys

    for extra in ([], ["--colwise"]):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
             "triton_embed.parallel.example", *extra],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "step 2: loss" in proc.stdout
