"""The serverless ComfyUI worker."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("comfyui-serverless-worker")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
