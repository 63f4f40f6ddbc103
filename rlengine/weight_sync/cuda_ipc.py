"""CUDA IPC transport, for rollout engines colocated with trainer rank 0 on the same GPUs: the
engine maps rank 0's bucket buffers through CUDA IPC handles instead of receiving copies.  The
handles only make sense on the same physical device, between processes of one host; on CPU there
is nothing to share this way (shared memory is the CPU's equivalent)."""
from __future__ import annotations

import torch


def share(buf: torch.Tensor) -> tuple:
    """A picklable handle of a CUDA tensor (the sender keeps `buf` alive until the sync ends)."""
    if buf.device.type != "cuda":
        raise ValueError("CUDA IPC shares CUDA tensors only; on CPU use sync_method=shm")
    from torch.multiprocessing.reductions import reduce_tensor

    return reduce_tensor(buf)


def open_handle(handle: tuple, device: torch.device) -> torch.Tensor:
    """The sender's buffer, mapped into this process on `device`: the handle names the sender's
    device index, which differs between processes with different CUDA_VISIBLE_DEVICES, so it is
    replaced by this process's index of the same GPU."""
    rebuild, args = handle
    args = list(args)
    args[6] = device.index if device.index is not None else torch.cuda.current_device()
    return rebuild(*args)
