"""farm: a distributed benchmark farm for GPT-2 models on CPUs and GPUs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("farm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
