"""``python -m catga_zmq.node``: run one node (see ``--help``).

The ``Node`` class lives in ``catga_zmq._node`` and is imported from the package root;
this module is the command's entry point, kept apart so that ``-m`` runs it fresh.
"""

from __future__ import annotations

from ._cli import run_node as main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
