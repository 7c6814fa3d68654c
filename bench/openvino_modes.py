"""How the OpenVINO engine feeds the network: a whole batch, one image at a time, a fixed-shape model.

    python bench/openvino_modes.py --model efficientnet_lite2-gem --height 288 --width 384 --images 20

The network's trunk alone, fp32, on --images random images of one shape, in one process, rounds
interleaved (best of --repeat after a warm-up), 2 threads by default:
  torch:batch      the trunk in torch eager on the whole batch (the baseline of the ratios)
  openvino:batch   the converted trunk (dynamic batch, height and width) on the whole batch at once
  openvino:each    the same model, one image per request (what the engine does)
  openvino:fixed   a model compiled for (1, 3, H, W), one image per request (the engine's model for a
                   shape it has seen STATIC_AFTER times)
  openvino:2x1     the fixed-shape model in two streams of one thread each, two requests in flight
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import openvino as ov
import torch

from deepret.models import create_model
from deepret.models.backbones import OFFLINE_BACKBONES
from deepret.precision import cpu_description
from deepret.runtime import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite2-gem")
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tune_allocator()  # as deepret's extraction does
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    weights = "imagenet" if args.model.rpartition("-")[0] in OFFLINE_BACKBONES else "random"
    net = create_model(args.model, weights=weights).eval()
    h, w = args.height, args.width
    x = torch.randn(args.images, 3, h, w)
    each = [x[i:i + 1].numpy().copy() for i in range(len(x))]
    core = ov.Core()
    with torch.no_grad():
        dynamic = ov.convert_model(net.trunk, example_input=x[:1], input=[(-1, 3, -1, -1)])
    fixed = dynamic.clone()
    fixed.reshape([1, 3, h, w])
    latency = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
               "INFERENCE_NUM_THREADS": threads}
    dyn = core.compile_model(dynamic, "CPU", latency).create_infer_request()
    fix = core.compile_model(fixed, "CPU", latency).create_infer_request()
    streams = ov.AsyncInferQueue(core.compile_model(fixed, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2,
        "INFERENCE_NUM_THREADS": threads}), 2)

    def two_streams():
        for a in each:
            streams.start_async([a])
        streams.wait_all()

    candidates = {
        "torch:batch": lambda: net.trunk(x),
        "openvino:batch": lambda: dyn.infer([x.numpy()], share_inputs=True),
        "openvino:each": lambda: [dyn.infer([a], share_inputs=True) for a in each],
        "openvino:fixed": lambda: [fix.infer([a], share_inputs=True) for a in each],
        "openvino:2x1": two_streams,
    }
    times: dict[str, list[float]] = {k: [] for k in candidates}
    with torch.inference_mode():
        for fn in candidates.values():
            fn()
        for _ in range(args.repeat):
            for k, fn in candidates.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    base = min(times["torch:batch"])
    print(f"{args.model} ({weights}), {args.images} images of {h}x{w}, {threads} threads, {cpu_description()}, "
          f"torch {torch.__version__}, OpenVINO {ov.__version__}, best of {args.repeat}\n")
    print("| mode | img/s | x torch batch | median x |\n|---|---:|---:|---:|")
    med = np.median(times["torch:batch"])
    for k, v in times.items():
        print(f"| {k} | {args.images / min(v):.2f} | {base / min(v):.2f} | {med / np.median(v):.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpu": cpu_description(), "seconds": times}, f, indent=1)


if __name__ == "__main__":
    main()
