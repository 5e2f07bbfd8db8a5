"""featcache: cache frozen-backbone features once, train transfer-learning heads in seconds."""

# The Python API (featcache.api). Light to import: torch and the rest load when a function needs them.
from .api import *  # noqa: F403
from .api import __all__, __version__  # noqa: F401
