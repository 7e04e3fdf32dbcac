"""Peer stacks for ``benchmarks/bench_all.py``: NATS, gRPC and zerorpc echo servers/clients.

Each module is both importable (the client side used by the benchmark process) and
runnable as a script (``serve``: a server in its own process that prints
``READY <address>`` on stdout once it accepts requests). Every peer carries the same
msgpack envelope and 100-byte payload as the raw baselines (``_frame.py``).
"""
