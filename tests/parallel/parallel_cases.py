"""The body of ``test_parallel.py``'s ranks (spawned with ``torch.multiprocessing``, gloo on the CPU, the
kernels under the interpreter). Each function raises on the first mismatch; the test sees the traceback.

Every sharded case is compared with the unsharded module built from the same seed (run on the reference
path: PyTorch's ops), output and every gradient (``full_tensor()``), and counts the collectives of a step.
"""
from __future__ import annotations

import copy
import os
from collections import Counter

import torch
import torch.distributed as dist
import torch.nn.functional as F

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_EMBED_AUTOTUNE", "0")

import triton_embed  # noqa: E402
from triton_embed.parallel import ColwiseParallel, RowwiseParallel, rowwise  # noqa: E402


#: This rank's rendezvous file (``_init``), beside which ``_finish`` keeps its own store.
_store_path: list[str] = []


def _init(rank: int, world: int, store: str):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    _store_path[:] = [store]
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


def _finish() -> None:
    """Tear the group down only once every rank is out of its last collective: a rank closing its gloo pairs
    while a peer still finishes the barrier aborts the peer ("terminate called without an active
    exception"). Leaving the barrier does not tell a rank that its peers have left it too; a file store,
    apart from gloo's sockets, does."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.barrier()
    done = dist.FileStore(f"{_store_path[0]}.done", world)
    done.set(f"rank{rank}", "left the barrier")
    done.wait([f"rank{r}" for r in range(world)])
    dist.destroy_process_group()


class CollectiveCounter:
    """Counts the collectives triton_embed.parallel issues (and DTensor's redistributions)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def __enter__(self):
        self._saved = [(dist, "all_reduce"), (rowwise, "_REDUCE_SCATTER"), (rowwise, "_ALL_GATHER")]
        self._originals = [getattr(owner, name) for owner, name in self._saved]
        for (owner, name), original in zip(self._saved, self._originals):
            setattr(owner, name, self._wrap(name.strip("_").lower(), original))
        return self

    def _wrap(self, name, original):
        def call(*args, **kwargs):
            self.counts[name] += 1
            return original(*args, **kwargs)

        return call

    def __exit__(self, *exc):
        for (owner, name), original in zip(self._saved, self._originals):
            setattr(owner, name, original)


def _local_slice(full: torch.Tensor, layout, rank: int, world: int) -> torch.Tensor:
    from torch.distributed.tensor import Shard

    if isinstance(layout, Shard):  # torch.chunk's split, as DTensor's: trailing ranks may get nothing
        chunks = full.chunk(world, dim=layout.dim)
        return chunks[rank] if rank < len(chunks) else full.narrow(layout.dim, 0, 0)
    return full


def _reference_module(cls, vocab, dim, options):
    """The same module on the reference path (PyTorch's ops): the unsharded truth."""
    ref_cls = triton_embed.reference.StableEmbedding if cls is triton_embed.StableEmbedding else torch.nn.Embedding
    return ref_cls(vocab, dim, **options)


def _case(mesh, rank, world, cls, style, output, vocab, options, expect, dim=8):
    from torch.distributed.tensor import Replicate, Shard

    shape = (2, 2 * world)
    torch.manual_seed(0)
    ours = cls(vocab, dim, **options)
    ref = _reference_module(cls, vocab, dim, options)
    ref.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, shape, generator=gen)
    ids[0, :3] = vocab - 1  # a repeated id in the last shard
    if options.get("padding_idx") is not None:
        ids[1, 0] = options["padding_idx"]
    grad = torch.randn(*shape, dim, generator=gen)
    layout = output or (Shard(-1) if style is ColwiseParallel else Replicate())
    sharded = style(output_layouts=output) if output is not None else style()
    from torch.distributed.tensor.parallel import parallelize_module

    tp = parallelize_module(copy.deepcopy(ours), mesh, sharded)
    with CollectiveCounter() as comms:
        out = tp(ids)
        forward = dict(comms.counts)
        out.backward(_local_slice(grad, layout, rank, world))
    backward = dict(comms.counts - Counter(forward))
    expected = ref(ids)
    expected.backward(grad)
    label = f"{cls.__name__} {style.__name__} out={output} V={vocab} D={dim} {options}"
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out, _local_slice(expected.detach(), layout, rank, world), **tol, msg=label)
    for (name, mine), (_, truth) in zip(tp.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(mine.grad.full_tensor(), truth.grad, **tol, msg=f"{label}: {name} grad")
    if options.get("max_norm") is not None:
        torch.testing.assert_close(tp.weight.full_tensor(), ref.weight.detach(), **tol, msg=f"{label}: renormed table")
    assert (forward, backward) == expect, f"{label}: collectives {forward} / {backward}, expected {expect}"


def tensor_parallel(rank: int, world: int, store: str) -> None:
    """Both styles, both modules, the options, uneven vocabularies, replicated and sequence-sharded outputs."""
    from torch.distributed.tensor import Shard

    mesh = _init(rank, world, store)
    E, S = triton_embed.Embedding, triton_embed.StableEmbedding
    ar, rs, ag = "all_reduce", "reduce_scatter", "all_gather"
    none = {}
    cases = [
        # (module, style, output layout, V, options, (forward collectives, backward collectives))
        (E, RowwiseParallel, None, 2 * world + 3, {}, ({ar: 1}, none)),
        (E, RowwiseParallel, None, 17, {"padding_idx": 2, "scale_grad_by_freq": True}, ({ar: 1}, none)),
        (E, RowwiseParallel, None, 17, {"max_norm": 0.5, "norm_type": 3.0}, ({ar: 1}, none)),
        (E, RowwiseParallel, Shard(1), 17, {"padding_idx": 16}, ({rs: 1}, {ag: 1})),
        (S, RowwiseParallel, None, 17, {"padding_idx": 2}, ({ar: 1}, none)),
        (S, RowwiseParallel, Shard(1), 2 * world + 3, {"scale_grad_by_freq": True}, ({rs: 1}, {ag: 1, ar: 1})),
        (S, RowwiseParallel, None, 17, {"max_norm": 1.0}, ({ar: 1}, none)),
        (E, ColwiseParallel, None, 17, {"padding_idx": 2, "scale_grad_by_freq": True}, (none, none)),
        (S, ColwiseParallel, None, 17, {"padding_idx": 2}, ({ar: 1}, {ar: 1})),
    ]
    for cls, style, output, vocab, options, expect in cases:
        _case(mesh, rank, world, cls, style, output, vocab, options, expect)
    # An embedding dim the ranks do not divide (slices of unequal width; one rank's empty when D < ranks),
    # with a replicated output too (an all-gather of the unequal slices).
    from torch.distributed.tensor import Replicate

    for cls, output, dim, expect in ((E, Replicate(), 7, (none, none)), (S, None, 7, ({ar: 1}, {ar: 1})),
                                     (S, Replicate(), 1, ({ar: 1}, {ar: 1}))):
        _case(mesh, rank, world, cls, ColwiseParallel, output, 13, {"padding_idx": 3}, expect, dim=dim)
    # ColwiseParallel cannot renorm (a norm spans the shards): a clear error, not a wrong answer.
    from torch.distributed.tensor.parallel import parallelize_module

    tp = parallelize_module(triton_embed.Embedding(9, 8, max_norm=1.0), mesh, ColwiseParallel())
    try:
        tp(torch.tensor([1, 2]))
    except NotImplementedError as exc:
        assert "max_norm" in str(exc)
    else:
        raise AssertionError("ColwiseParallel with max_norm did not raise")
    _finish()


def functional_dtensors(rank: int, world: int, store: str) -> None:
    """The custom ops on DTensors (the registered sharding rules), and the refusal of a Shard(0) table."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = _init(rank, world, store)
    torch.manual_seed(0)
    weight = torch.randn(10, 8)
    ids = torch.randint(0, 10, (2 * world, 3))
    grad = torch.randn(2 * world, 3, 8)
    expected_grad = torch.ops.aten.embedding_dense_backward(grad.reshape(-1, 8), ids.reshape(-1), 10, -1, False)
    for table, id_layout in ((Shard(1), Replicate()), (Replicate(), Shard(0)), (Replicate(), Replicate())):
        w = distribute_tensor(weight, mesh, [table]).requires_grad_()
        out = triton_embed.functional.embedding(distribute_tensor(ids, mesh, [id_layout]), w)
        torch.testing.assert_close(out.full_tensor(), F.embedding(ids, weight))
        out.backward(distribute_tensor(grad, mesh, out.placements))
        torch.testing.assert_close(w.grad.full_tensor(), expected_grad, rtol=1e-5, atol=1e-6)
    x = torch.randn(2 * world, 5, 8)
    y = triton_embed.functional.layer_norm(distribute_tensor(x, mesh, [Shard(0)]), 8)
    torch.testing.assert_close(y.full_tensor(), F.layer_norm(x, (8,)), rtol=1e-5, atol=1e-5)
    try:
        triton_embed.functional.embedding(distribute_tensor(ids, mesh, [Replicate()]),
                                          distribute_tensor(weight, mesh, [Shard(0)]))
    except NotImplementedError as exc:
        assert "RowwiseParallel" in str(exc)
    else:
        raise AssertionError("a Shard(0) DTensor table was not refused")
    _finish()


class TiedModel(torch.nn.Module):
    """An embedding and an LM head sharing one weight, as language models do."""

    def __init__(self, stable: bool) -> None:
        super().__init__()
        cls = triton_embed.StableEmbedding if stable else triton_embed.Embedding
        self.embed = cls(24, 8, padding_idx=0)
        self.head = torch.nn.Linear(8, 24, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _batches(world: int, steps: int):
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        ids = torch.randint(0, 24, (2 * world, 5), generator=gen)
        ids[:, -1] = 0  # padding
        yield ids, torch.randint(1, 24, (2 * world, 5), generator=gen)


def _loss(model, ids, targets):
    return F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())


def data_parallel(rank: int, world: int, store: str) -> None:
    """fully_shard (FSDP2) and DDP training 3 AdamW steps, each rank on its slice of the batch, match one
    process on the whole batch; the tied head stays tied."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    mesh = _init(rank, world, store)
    for wrap in ("fsdp", "ddp"):
        for stable in (False, True):
            torch.manual_seed(0)
            single = TiedModel(stable)
            model = copy.deepcopy(single)
            if wrap == "fsdp":
                fully_shard(model, mesh=mesh)
                params = dict(model.named_parameters())
            else:
                model = DistributedDataParallel(model)
                params = dict(model.module.named_parameters())
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            opt_single = torch.optim.AdamW(single.parameters(), lr=1e-2)
            mine = slice(2 * rank, 2 * rank + 2)
            for ids, targets in _batches(world, 3):
                opt_single.zero_grad()
                _loss(single, ids, targets).backward()
                opt_single.step()
                opt.zero_grad()
                _loss(model, ids[mine], targets[mine]).backward()
                opt.step()
            for name, truth in single.named_parameters():
                mine_param = params[name]
                value = mine_param.full_tensor() if hasattr(mine_param, "full_tensor") else mine_param
                torch.testing.assert_close(value.detach(), truth.detach(), rtol=1e-5, atol=1e-6,
                                           msg=f"{wrap} stable={stable} {name}")
            inner = model if wrap == "fsdp" else model.module
            assert inner.head.weight is inner.embed.weight, f"{wrap}: the head is no longer tied"
    _finish()


def four_ranks(rank: int, world: int, store: str) -> None:
    """Four ranks, a vocabulary smaller than needed to give every rank a row (one shard is empty)."""
    from torch.distributed.tensor import Shard

    mesh = _init(rank, world, store)
    for cls in (triton_embed.Embedding, triton_embed.StableEmbedding):
        _case(mesh, rank, world, cls, RowwiseParallel, None, 3, {}, ({"all_reduce": 1}, {}))
        _case(mesh, rank, world, cls, RowwiseParallel, Shard(1), 10, {"padding_idx": 9},
              ({"reduce_scatter": 1}, {"all_gather": 1, **({"all_reduce": 1} if cls is triton_embed.StableEmbedding else {})}))
    _finish()


def out_of_range(rank: int, world: int, store: str) -> None:
    """A bad id through both styles and both modules (max_norm too): with the check deferred every rank
    raises at the same point, before any gradient or renorm, and nothing changes; with it off the sharded
    gradients are the unsharded module's (bad ids read zero rows in both)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = _init(rank, world, store)
    vocab, dim = 11, 8
    ids = torch.tensor([[1, vocab + 3, 4], [-1, 10, 1]])
    grad = torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(3))
    modules = [(triton_embed.Embedding, {}), (triton_embed.Embedding, {"padding_idx": 4}),
               (triton_embed.StableEmbedding, {"padding_idx": 4})]
    for style in (RowwiseParallel, ColwiseParallel):
        for cls, options in modules + ([(triton_embed.Embedding, {"max_norm": 0.5})] if style is RowwiseParallel else []):
            label = f"{cls.__name__} {style.__name__} {options}"
            for mode in ("deferred", "off"):
                triton_embed.set_index_check(mode)
                torch.manual_seed(0)
                single = cls(vocab, dim, **options)
                tp = parallelize_module(copy.deepcopy(single), mesh, style())
                before = {name: p.full_tensor().clone() for name, p in tp.named_parameters()}
                layout = Shard(-1) if style is ColwiseParallel else Replicate()
                try:
                    out = tp(ids)
                    out.backward(_local_slice(grad, layout, rank, world))
                except IndexError:
                    raised = True
                else:
                    raised = False
                triton_embed.check_errors()
                if mode == "deferred":
                    assert raised, f"{label}: nothing raised"
                    for name, p in tp.named_parameters():
                        assert p.grad is None, f"{label}: {name} has a gradient"
                        assert torch.equal(p.full_tensor(), before[name]), f"{label}: {name} changed"
                    continue
                assert not raised, f"{label}: off mode raised"
                single(ids).backward(grad)
                for (name, mine), (_, truth) in zip(tp.named_parameters(), single.named_parameters()):
                    torch.testing.assert_close(mine.grad.full_tensor(), truth.grad, rtol=1e-5, atol=1e-5,
                                               msg=f"{label}: {name} grad")
                    torch.testing.assert_close(mine.full_tensor(), truth.detach(), rtol=0, atol=0,
                                               msg=f"{label}: {name}")
    triton_embed.set_index_check("deferred")
    _finish()
