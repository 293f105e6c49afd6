"""Where things live: the cache (``DFML_CACHE``) and the results directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of content-addressed caches (datasets, zoo members); ``DFML_CACHE`` or ~/.cache."""
    root = os.environ.get("DFML_CACHE") or Path.home() / ".cache" / "dfml-bench"
    path = Path(root).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from bench.errors import BenchError

        raise BenchError(
            f"cache dir {str(path)!r} ($DFML_CACHE) cannot be created: {error.strerror}"
        ) from None
    return path


def resolve_results_dir(configured: str | os.PathLike[str]) -> Path:
    """The absolute results directory; created if missing, with a clear error if unwritable."""
    from bench.errors import BenchError

    if not str(configured).strip().strip("'\""):  # '' resolves to the working directory: never meant
        raise BenchError(
            "paths.results is empty (is $DFML_RESULTS set to an empty string?); give a results directory"
        )
    path = Path(configured).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchError(f"results dir {str(path)!r} cannot be created: {error}") from error
    if not os.access(path, os.W_OK):
        raise BenchError(f"results dir {str(path)!r} is not writable; set paths.results=<dir>")
    return path
