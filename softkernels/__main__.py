"""Command line: ``python -m softkernels <command>`` (also installed as ``softkernels``).

Commands:
  demo   plain greedy vs soft thinking on SmolLM2-135M-Instruct, offline (``make demo``)
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m softkernels",
                                     description="softkernels: fused kernels and Hugging Face "
                                                 "hooks for soft thinking in LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    from .hf import demo
    demo.build_parser(sub.add_parser("demo", help="plain greedy vs soft thinking on "
                                                  "SmolLM2-135M-Instruct (offline)"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
