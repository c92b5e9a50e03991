"""Search spaces by name (`darts`, `resnet`, ...); importing this package registers the built-in ones."""
from ..registry import SPACES
from .base import Space

__all__ = ["SPACES", "Space", "get_space", "list_spaces"]


def get_space(name: str) -> Space:
    return SPACES.get(name)


def list_spaces() -> list[str]:
    return SPACES.names()


# built-in spaces register themselves on import
from . import darts as _darts  # noqa: E402,F401
from . import resnet as _resnet  # noqa: E402,F401
