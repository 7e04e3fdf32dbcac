"""The library's version, in a module of its own so that any module can import it.

It imports nothing: ``from ._version import __version__`` never sees a half-initialised
package, whichever module the import starts from.
"""

from __future__ import annotations

__version__ = "0.1.0"
