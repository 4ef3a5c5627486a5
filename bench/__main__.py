"""``python -m triton_embed.bench``: the benchmark and autotuning CLI (in progress)."""
import sys


def main() -> int:
    print("triton_embed.bench: the autotuning benchmark is not built yet; see the README.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
