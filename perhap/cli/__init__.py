"""The ``perhap`` command line: serve, tail, and the everyday client commands.

Thin by design: parse arguments (:mod:`.parser`), turn every expected failure into one line on
stderr and a non-zero exit code (:mod:`.main`, :mod:`.common`), and hand the real work to the
server, the store or the client from one small module per command group: :mod:`.serve`,
:mod:`.tokens`, :mod:`.events` (append, append-many, read, keys), :mod:`.tail`, :mod:`.transfer` (export,
import, copy). Heavy imports (httpx, the backends, uvicorn) happen inside the commands, so
``perhap --help`` starts fast.
"""

from .common import CommandError
from .main import main
from .parser import build_parser

__all__ = ["CommandError", "build_parser", "main"]
