"""What a GPU process would compile, found on the CPU without running a kernel.

Inside :func:`gpu_launches`, triton_embed's launchers run on CPU tensors as they would on a GPU: the kernel
path is taken (as under the interpreter), each launch chooses its config from the GPU config lists
(``tuning.CONFIGS``, not the interpreter's), and a tuning run hands every config to its launch once (as
``do_bench`` would). No kernel runs: each ``kernel[grid](...)`` records the specialization Triton would
compile for it (the kernel, its constexprs, the dtype and 16-byte alignment of each pointer, whether each
specialized integer is 1 or a multiple of 16, and the launch options) and returns. Outputs are therefore
left unwritten: a trace counts launches and compiles, it computes nothing.

It needs the compiled kernels (``JITFunction``), i.e. a process started without ``TRITON_INTERPRET``.

The plan (``plan``) charges each new specialization a compile time; the first-use tuning cost
(``tuning_cost``) counts the configs a training step would tune.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from triton.runtime.jit import JITFunction

from triton_embed import tuning
from triton_embed.runtime import dispatch

Spec = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class Launch:
    """A launch as a worker process can repeat it: the kernel's module and name, its arguments with every
    tensor replaced by its dtype (``JITFunction.warmup`` compiles for such a stand-in, 16-byte aligned), and
    its keywords (constexprs and launch options). Picklable."""

    module: str
    kernel: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]


def _portable(value: Any) -> Any:
    return value.dtype if isinstance(value, torch.Tensor) else value


def launch_of(fn: JITFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Launch:
    """The :class:`Launch` of one traced launch."""
    return Launch(fn.fn.__module__, fn.__name__, tuple(_portable(a) for a in args),
                  tuple((k, _portable(v)) for k, v in kwargs.items()))


def _int_key(value: int, specialize: bool) -> str:
    """Triton's key of an integer argument: its width, and (when specialized) 1 or divisible by 16.

    >>> _int_key(1, True), _int_key(4096, True), _int_key(4097, True), _int_key(4096, False), _int_key(2**40, True)
    ('1', 'i32:16', 'i32', 'i32', 'i64:16')
    """
    width = "i32" if -2**31 <= value < 2**31 else "i64"
    if not specialize:
        return width
    if value == 1:
        return "1"
    return f"{width}:16" if value % 16 == 0 else width


def specialization(fn: JITFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spec:
    """(kernel name, key) of one launch: what Triton compiles once per process and caches on disk."""
    bound: dict[str, Any] = dict(zip((p.name for p in fn.params), args))
    bound.update({k: v for k, v in kwargs.items() if k in {p.name for p in fn.params}})
    key: list[Any] = []
    for param in fn.params:
        value = bound.get(param.name, param.default)
        if param.is_constexpr:
            key.append(str(value))
        elif isinstance(value, torch.Tensor):
            aligned = value.data_ptr() % 16 == 0 and not param.do_not_specialize_on_alignment
            key.append(f"*{str(value.dtype).removeprefix('torch.')}{':16' if aligned else ''}")
        elif isinstance(value, bool):
            key.append("i1")
        elif isinstance(value, int):
            key.append(_int_key(value, not param.do_not_specialize))
        elif isinstance(value, float):
            key.append("fp32")
        else:
            key.append(repr(value))
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k in tuning.LAUNCH_OPTIONS))
    return fn.__name__, (*key, options)


@dataclass
class Trace:
    """The launches seen, the distinct specializations (in first-seen order), and the configs a tuning run
    would have timed."""

    launches: int = 0
    #: Each distinct specialization and the first launch that asked for it, in first-seen order.
    specs: dict[Spec, Launch] = field(default_factory=dict)
    timed: int = 0
    #: The first launch of each kernel (function, arguments, keywords): what :func:`compile_seconds` compiles.
    samples: dict[str, tuple[JITFunction, tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)

    def record(self, fn: JITFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """One launch."""
        self.launches += 1
        spec = specialization(fn, args, kwargs)
        if spec not in self.specs:
            self.specs[spec] = launch_of(fn, args, kwargs)
        self.samples.setdefault(fn.__name__, (fn, args, kwargs))

    def mark(self) -> tuple[int, int, int]:
        """A point to count from (:meth:`since`)."""
        return self.launches, len(self.specs), self.timed

    def since(self, mark: tuple[int, int, int]) -> dict[str, Any]:
        """Launches, new specializations (by kernel) and configs timed since ``mark``."""
        launches, specs, timed = mark
        new = list(self.specs)[specs:]
        kernels: dict[str, int] = {}
        for name, _ in new:
            kernels[name] = kernels.get(name, 0) + 1
        return {"launches": self.launches - launches, "specializations": len(new), "kernels": kernels,
                "configs_timed": self.timed - timed}


@contextlib.contextmanager
def gpu_launches(trace: Trace, autotune: bool = False) -> Iterator[Trace]:
    """Run triton_embed on CPU tensors as a GPU process would choose and launch, recording instead of
    launching. ``autotune``: keys missing from the (empty, temporary) tuning cache are tuned at first use,
    as ``TRITON_EMBED_AUTOTUNE=1`` does; under :func:`tuning.forced_tuning` every config is tuned anyway."""
    from triton_embed.kernels.gather import gather_rows_kernel

    if not isinstance(gather_rows_kernel, JITFunction):
        raise RuntimeError("tracing GPU launches needs the compiled kernels: run without TRITON_INTERPRET")

    def run(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        trace.record(self, args, kwargs)

    def every_config(kernel: str, configs: list[tuning.Config], bench: Any) -> tuning.Config:
        for config in configs:  # what do_bench would launch (and compile) once per config
            bench(config)
        trace.timed += len(configs)
        return configs[0]

    saved = {"run": JITFunction.run, "interp": dispatch.interpreter_enabled, "tuning_interp": tuning.interpreter_enabled,
             "fastest": tuning._fastest, "capturing": tuning._capturing, "poison": dispatch._poison["enabled"],
             "env": {k: os.environ.get(k) for k in ("TRITON_EMBED_AUTOTUNE", "TRITON_EMBED_CACHE_DIR")}}
    with tempfile.TemporaryDirectory(prefix="triton-embed-trace-") as cache:
        JITFunction.run = run
        dispatch.interpreter_enabled = lambda: True  # CPU tensors take the kernels' launchers
        tuning.interpreter_enabled = lambda: False  # ... with the GPU config lists
        tuning._fastest = every_config
        tuning._capturing = lambda: False
        dispatch.set_poison(False)
        os.environ.update(TRITON_EMBED_AUTOTUNE="1" if autotune else "0", TRITON_EMBED_CACHE_DIR=cache)
        tuning.forget_choices()
        try:
            yield trace
        finally:
            JITFunction.run = saved["run"]
            dispatch.interpreter_enabled = saved["interp"]
            tuning.interpreter_enabled = saved["tuning_interp"]
            tuning._fastest = saved["fastest"]
            tuning._capturing = saved["capturing"]
            dispatch.set_poison(saved["poison"])
            for key, value in saved["env"].items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            tuning.forget_choices()


def stand_in(size: int) -> int:
    """A CPU-sized stand-in for a GPU size (vocabulary rows, tokens) that keeps what specializes a kernel: a
    size and every ``cdiv(size, c)`` for powers of two c ≤ 256 stay equal to it modulo 16, and never 1.

    >>> stand_in(128256), stand_in(16384), stand_in(50257), stand_in(1000)
    (5376, 4096, 5201, 1000)
    """
    return size if size <= 8192 else 4096 + size % 4096


_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
          torch.bool: "i1"}


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (ptxas): unlike the wall clock, not
    stretched by other work on a shared machine; on a dedicated core the two agree.

    >>> cpu_seconds() > 0
    True
    """
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def compile_seconds(trace: Trace, kernels: tuple[str, ...], capability: int = 90) -> dict[str, float]:
    """CPU seconds (:func:`cpu_seconds`) of one ``triton.compile`` (Triton's front end, LLVM and ptxas) of each
    sampled launch of ``kernels`` for an ``sm_<capability>`` GPU, here, in an empty Triton cache: what a first
    launch of a new specialization costs (the plan charges the median to every specialization)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", capability, 32)
    spelling = "constexprs" if "constexprs" in inspect.signature(ASTSource.__init__).parameters else "constants"
    seconds: dict[str, float] = {}
    previous = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="triton-embed-compile-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        try:
            for name in kernels:
                if name not in trace.samples:
                    continue
                fn, args, kwargs = trace.samples[name]
                bound = dict(zip((p.name for p in fn.params), args)) | kwargs
                signature, constexprs = {}, {}
                for param in fn.params:
                    value = bound.get(param.name, param.default)
                    if param.is_constexpr or value is None:
                        signature[param.name], constexprs[param.name] = "constexpr", value
                    elif isinstance(value, torch.Tensor):
                        signature[param.name] = "*" + _TYPES[value.dtype]
                    elif isinstance(value, bool):
                        signature[param.name] = "i1"
                    elif isinstance(value, int):
                        signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
                    else:
                        signature[param.name] = "fp32"
                options = {k: v for k, v in kwargs.items() if k in tuning.LAUNCH_OPTIONS}
                source = ASTSource(fn=fn, signature=signature, **{spelling: constexprs})
                start = cpu_seconds()
                triton.compile(source, target=target, options=options)
                seconds[name] = cpu_seconds() - start
        finally:
            if previous is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = previous
    return seconds
