"""The micro-benchmarks' header: the machine, the versions, git and the command, as every
benchmark report starts (pytest-benchmark's own table follows)."""

from benchmarks._common import environment, format_environment


def pytest_report_header() -> list[str]:
    return format_environment(environment("pytest-benchmark")).splitlines()[1:-1]
