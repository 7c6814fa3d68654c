"""`deepret models`, `download` and `convert-gt`: the model names and the benchmarks' files."""
from __future__ import annotations


def cmd_models(args) -> int:
    from deepret.models import list_models

    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  size  weights")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['size']:>4}  {r['weights']}")
    print("\nsize: the default evaluation size (longest image side) when --size is not given.")
    print("\nAny convolutional timm model works too, as <timm name>-gem (e.g. convnext_tiny-gem).")
    print("cirtorch's published networks download once into the torch hub cache; --model FILE also takes a "
          "checkpoint of cirtorch (cnnimageretrieval-pytorch) or of deepret.")
    return 0


def cmd_download(args) -> int:
    from deepret.datasets import download

    download(args.name, args.root, base_url=args.base_url)
    print(f"{args.name} is ready in {args.root / args.name}")
    return 0


def cmd_convert_gt(args) -> int:
    from deepret.datasets import convert_gt, write_gnd

    write_gnd(convert_gt(args.gt_dir, args.imlist), args.out)
    print(f"wrote {args.out}")
    return 0
