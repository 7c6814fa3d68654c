"""What a build may ask of the machine, checked before any work: the largest image side its settings
describe at, and the memory one batch of it needs."""
from __future__ import annotations

import math

from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.imageio import DEFAULT_MAX_PIXELS
from deepret.models import RetrievalNet

BATCH_PIXELS = 4 * 1024 * 1024  # what deepret.extract stacks into one batch (max_batch_pixels), one image at least


def check_size(net: RetrievalNet, settings: ExtractSettings, max_pixels: int | None, device=None) -> None:
    """Before any work: the largest image side the settings describe at (size x the largest scale) must
    keep an image within max_pixels (default 100 Mpx: 10000 px a side), and one batch's activations must
    fit in the memory free on the device (a lower bound: the largest layer's input and output)."""
    side = settings.size * max(settings.scales)
    limit = math.isqrt(max_pixels or DEFAULT_MAX_PIXELS)
    if side > limit:
        raise DeepretError(f"--size {settings.size} (x scale {max(settings.scales):g}) is above {limit} px, the side of "
                           f"a square of --max-pixels {max_pixels or DEFAULT_MAX_PIXELS}: give a smaller --size")
    pixels = max(BATCH_PIXELS, int(side) ** 2)
    per_pixel, free = activation_bytes_per_pixel(net), free_memory(device)
    need = per_pixel * pixels
    if free is not None and need > free:
        fits = int(math.sqrt(free / per_pixel) / max(settings.scales))
        raise DeepretError(f"--size {settings.size}: describing one image needs at least {need / 1e9:.1f} GB of memory, "
                           f"{free / 1e9:.1f} GB are free: give --size {min(fits, limit)} or less")


def activation_bytes_per_pixel(net: RetrievalNet) -> float:
    """Bytes of the largest layer's input and output per input pixel (float32), measured on a 64 x 64 image."""
    import torch

    largest = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() + sum(t.numel() for t in inputs if isinstance(t, torch.Tensor)))

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, 64, 64, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return 4.0 * largest[0] / (64 * 64)


def free_memory(device=None) -> int | None:
    """Bytes free for a batch: on CUDA the device's free memory, else the host's MemAvailable (None: unknown)."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
