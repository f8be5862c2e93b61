"""Where the training slices are held, and their random batches.

The healthy ``train`` slices of the slice cache are held in one tensor on the training
device when they fit (then a batch is one index operation, so loading never limits speed),
else in pinned RAM with batches copied to the GPU, else read batch by batch from the cache's
memory map, the next batch while the current one trains. Every mode yields the same batches.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["DATA_MODES", "choose_data_mode", "SliceBatches"]

DATA_MODES = ("device", "host", "memmap")


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def choose_data_mode(nbytes: int, device: torch.device) -> str:
    """Where ``nbytes`` of slices go: ``device`` (one tensor on the training device, when it
    takes at most 30% of free GPU memory or 40% of RAM), ``host`` (pinned RAM, batches copied
    to the GPU) or ``memmap`` (batches read from the cache's memory map)."""
    ram = _ram_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= 0.3 * free:
            return "device"
        return "host" if nbytes <= 0.4 * ram else "memmap"
    return "device" if nbytes <= 0.4 * ram else "memmap"


class SliceBatches:
    """Random batches of training slices as (B, 1, H, W) float32 tensors on ``device``.

    images : (N, H, W) float32 in [-1, 1], e.g. the slice cache's memory map.
    rows : (R,) the rows of ``images`` to train on.
    mode : ``auto`` | ``device`` | ``host`` | ``memmap`` (see :func:`choose_data_mode`).
    channels_last : yield batches in channels-last memory format (mixed precision on CUDA).
    """

    def __init__(self, images, rows, device: torch.device, batch_size: int, mode: str = "auto",
                 channels_last: bool = False):
        self.images, self.rows, self.device = images, np.asarray(rows), device
        self.batch_size, self.channels_last = int(batch_size), channels_last
        n, (h, w) = len(self.rows), images.shape[1:]
        self.mode = choose_data_mode(n * h * w * 4, device) if mode == "auto" else mode
        if self.mode not in DATA_MODES:
            raise ValueError(f"data_mode must be auto, device, host or memmap, got {mode!r}")
        if self.mode == "host" and device.type != "cuda":
            self.mode = "device"  # on the CPU, RAM is the device
        self.data = None
        if self.mode in ("device", "host"):
            where = device if self.mode == "device" else torch.device("cpu")
            pin = self.mode == "host"
            self.data = torch.empty((n, 1, h, w), dtype=torch.float32, device=where, pin_memory=pin)
            chunk = max(1, (256 << 20) // (h * w * 4))  # copy 256 MB at a time: no second full copy in RAM
            for i in range(0, n, chunk):
                block = np.ascontiguousarray(images[self.rows[i:i + chunk]], dtype=np.float32)
                self.data[i:i + chunk, 0].copy_(torch.from_numpy(block))

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.split(torch.arange(len(self.rows))))

    def split(self, perm: torch.Tensor) -> list[torch.Tensor]:
        """Index lists of one epoch: consecutive ``batch_size`` pieces of ``perm``; a last
        batch of a single image is dropped (BatchNorm cannot normalise one sample)."""
        out = list(torch.split(perm, self.batch_size))
        if len(out) > 1 and len(out[-1]) == 1:
            out.pop()
        return out

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        elif x.device != self.device:
            x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _load(self, idx: torch.Tensor) -> torch.Tensor:
        if self.mode == "host":
            return self.data.index_select(0, idx)
        block = np.asarray(self.images[self.rows[idx.numpy()]], dtype=np.float32)
        return torch.from_numpy(block)[:, None]

    def epoch(self, perm: torch.Tensor):
        """Yield the batches of one epoch in the order of ``perm`` (a CPU permutation of the rows)."""
        return self.batches(self.split(perm))

    def batches(self, pieces: list[torch.Tensor]):
        """Yield the batch of each index list of ``pieces`` (positions in ``rows``), in order:
        (b, 1, H, W) float32 on the device. A process of a distributed training loads its
        shares of the global batches this way."""
        if not pieces:
            return
        if self.mode == "device":
            for p in pieces:
                x = self.data.index_select(0, p.to(self.device))
                yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            return
        with ThreadPoolExecutor(max_workers=1) as pool:  # read the next batch while this one trains
            nxt = pool.submit(self._load, pieces[0])
            for i in range(len(pieces)):
                x = nxt.result()
                if i + 1 < len(pieces):
                    nxt = pool.submit(self._load, pieces[i + 1])
                yield self._to_device(x)
