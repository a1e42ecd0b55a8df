"""Which ComfyUI execution errors only a fresh process can cure, decided from what a user cannot write.

ComfyUI's `execution_error` carries `exception_type`, the module-qualified class of what the node raised
(docs/comfyui-protocol.md). Its `exception_message` often echoes user input (a SaveImage `filename_prefix`,
a prompt), so text alone never decides. Since torch 2.8 every CUDA runtime error is a `torch.AcceleratorError`
whose message is CUDA's own error string; only with that type is the message trusted, and then only to tell
the errors that leave the CUDA context usable (out of memory, a bad launch configuration) from the ones
that poison it (illegal memory access, device-side assert, launch failure, ECC, ...).
"""

from __future__ import annotations

# full_type_name() of ComfyUI's execution.py: module + "." + qualname ("builtins" omitted).
CUDA_ERROR_TYPES = frozenset({"torch.AcceleratorError", "torch.cuda.CudaError"})

# CUDA errors after which the context still works: the job failed, the worker need not die.
RECOVERABLE_CUDA_ERRORS = (
    "out of memory",
    "invalid configuration argument",
    "invalid argument",
    "too many resources requested for launch",
    "operation not supported",
)


def is_fatal_gpu_error(exception_type: str, exception_message: str) -> bool:
    if exception_type not in CUDA_ERROR_TYPES:
        return False
    first_line = exception_message.strip().splitlines()[0] if exception_message.strip() else ""
    cuda_error = first_line.removeprefix("CUDA error:").strip().lower()
    return not cuda_error.startswith(RECOVERABLE_CUDA_ERRORS)
