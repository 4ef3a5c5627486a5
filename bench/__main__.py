"""``python -m triton_embed.bench``: autotune the kernels, benchmark them against their peers, report."""
import sys

from triton_embed.bench.bootstrap import ensure_runtime

if __name__ == "__main__":
    _mode = ensure_runtime(sys.argv[1:])
    from triton_embed.bench.cli import main

    sys.exit(main(sys.argv[1:], mode=_mode))
