"""CPU time of decoding one photo for the network, by stage, on one thread.

    OMP_NUM_THREADS=1 python bench/decode_cost.py --images 40 --size 384

On the first --images database photos of rparis6k-mini, as the decoding thread of deepret.extract
does it: the JPEG draft decode (DCT scaling to >= the target), the resize to the target shape, and
the normalisation to a float tensor (imageio.to_tensor on the resized image). Milliseconds per image.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch  # noqa: F401  (imported before timing: to_tensor returns a tensor)
from PIL import Image

from deepret.imageio import ImageSource, target_shape, to_tensor
from deepret.precision import cpu_description

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=384)
    args = ap.parse_args()
    paths = sorted((DATA / "rparis6k-mini" / "jpg").glob("*.jpg"))[:args.images]
    source = ImageSource(paths)
    spent = {"draft decode": 0.0, "resize": 0.0, "normalise": 0.0}
    for i in range(len(paths)):
        w, h = source.size(i)
        th, tw = target_shape(w, h, args.size, 32)
        t0 = time.perf_counter()
        im = source.load(i, draft_to=(tw, th))
        t1 = time.perf_counter()
        im = im.resize((tw, th), Image.BILINEAR)
        t2 = time.perf_counter()
        to_tensor(im, (th, tw), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        t3 = time.perf_counter()
        for k, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2)):
            spent[k] += dt
    print(f"{len(paths)} rparis6k-mini photos at {args.size} px, {cpu_description()}")
    for k, v in spent.items():
        print(f"{k}: {v / len(paths) * 1000:.2f} ms/image")
    print(f"total: {sum(spent.values()) / len(paths) * 1000:.2f} ms/image")


if __name__ == "__main__":
    main()
