"""`posttrain lab`: the lecture's five interactive canvases and a run viewer, in the browser.

The server (`posttrain.lab.server`) uses only the standard library's HTTP server; every
number on the page comes from the library's own functions through its JSON endpoints.
The command-line entry point is :func:`lab_main`.
"""

from __future__ import annotations

from collections.abc import Sequence


def lab_main(argv: Sequence[str] | None = None) -> int:
    """Serve the lab (`posttrain lab [--port N] [--run DIR]`); returns the exit code.

    Imported lazily so `import posttrain.lab` stays cheap (the server pulls in torch).
    """
    from posttrain.lab.server import lab_main as main

    return main(argv)


__all__ = ["lab_main"]
