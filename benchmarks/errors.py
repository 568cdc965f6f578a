"""The one error a user of the benchmark suite can cause: a wrong option or input."""

from edge.errors import EdgeError


class BenchmarkError(EdgeError):
    """A bad option, a missing file or environment: the message says what to do."""

    exit_code = 2
