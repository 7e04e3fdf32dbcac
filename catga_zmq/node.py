"""``python -m catga_zmq.node``: run one node (see ``--help``).

The ``Node`` class lives in ``catga_zmq._node`` and is imported from the package root;
this module is the command's entry point, kept apart so that ``-m`` runs it fresh.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run one node until SIGTERM or Ctrl-C; the exit code says how it ended."""
    from ._cli import run_node

    return run_node(argv)


if __name__ == "__main__":
    raise SystemExit(main())
