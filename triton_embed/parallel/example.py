"""A runnable tensor-parallel example: a tiny language model whose token embedding (a StableEmbedding) is
sharded by vocabulary over the ranks, trained for a few steps.

    torchrun --nproc-per-node 2 -m triton_embed.parallel.example            # CPU (gloo) or GPUs (nccl)
    torchrun --nproc-per-node 2 -m triton_embed.parallel.example --colwise  # shard the embedding dim instead

On CPU tensors the ops run the reference path (PyTorch's ops), or the Triton kernels under the interpreter
when ``TRITON_INTERPRET=1`` is set; on GPUs the kernels run natively.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import parallelize_module

import triton_embed
from triton_embed.parallel import ColwiseParallel, RowwiseParallel


class TinyLM(torch.nn.Module):
    """Token embedding (StableEmbedding) → one linear layer → vocabulary logits."""

    def __init__(self, vocab: int = 1000, dim: int = 64) -> None:
        super().__init__()
        self.tok_embeddings = triton_embed.StableEmbedding(vocab, dim, padding_idx=0)
        self.output = torch.nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.output(self.tok_embeddings(ids))


def main(argv: list[str] | None = None) -> None:
    """Shard the embedding, train three steps, print the losses (rank 0)."""
    parser = argparse.ArgumentParser(description="tensor-parallel triton_embed example (run it under torchrun)")
    parser.add_argument("--colwise", action="store_true", help="shard the embedding dim instead of the rows")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    device = torch.device("cuda" if cuda else "cpu")
    mesh = init_device_mesh(device.type, (world,))

    torch.manual_seed(0)  # every rank builds the same model (the table is initialised whole, then sharded)
    model = TinyLM().to(device)
    # The embedding's output is replicated (RowwiseParallel's default), or its columns are (ColwiseParallel
    # with output_layouts=Replicate()), so the rest of the model runs unchanged on every rank.
    style = ColwiseParallel(output_layouts=Replicate()) if args.colwise else RowwiseParallel()
    parallelize_module(model, mesh, {"tok_embeddings": style})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # One batch, the same on every rank (the ids are replicated), fitted for three steps: the loss falls.
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (4, 32), generator=gen).to(device)
    targets = ids.roll(-1, dims=1)  # predict the next id
    for step in range(3):
        loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    triton_embed.check_errors()
    dist.barrier()  # every rank done before the group goes
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
