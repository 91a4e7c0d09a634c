"""farm: a distributed benchmark farm for GPT-2 models on CPUs and GPUs."""

from importlib.metadata import PackageNotFoundError, version

# The distribution's name on the package index (`pip install gpt2-farm`); the package is `farm`.
DISTRIBUTION = "gpt2-farm"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
