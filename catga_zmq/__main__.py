"""``python -m catga_zmq``: operator commands (``nodes``, ``ping``, ``keygen``)."""

from __future__ import annotations


def main() -> int:
    from ._cli import ops_main

    return ops_main()


if __name__ == "__main__":
    raise SystemExit(main())
