"""`deepret train`, `whiten`, `triplets` and `study`: finetuning, whitening and the study."""
from __future__ import annotations


def cmd_train(args) -> int:
    from deepret.datasets import load_labelled
    from deepret.runtime import is_main_process
    from deepret.train import TrainConfig, train_classify, train_rank

    data = load_labelled(args.data, args.data_root)
    cfg = TrainConfig(out=args.out, epochs=args.epochs, batch_size=args.batch_size, size=args.size, lr=args.lr,
                      optimizer=args.optimizer, weight_decay=args.weight_decay, lr_decay=args.lr_decay,
                      lr_mult=args.lr_mult, augment=args.augment, seed=args.seed, device=args.device,
                      workers=args.workers, val=args.val, val_root=args.val_root, val_every=args.val_every,
                      val_size=args.val_size, resume=args.resume, progress=not args.quiet,
                      precision=args.precision)
    if args.mode == "classify":
        last = train_classify(data, args.model, cfg, weights=args.weights, init=args.init, freeze=args.freeze,
                              val_fraction=args.val_fraction)
    else:
        last = train_rank(data, args.model, cfg, weights=args.weights, loss=args.loss, margin=args.margin,
                          negatives=args.negatives, pool_size=args.pool_size, queries=args.queries,
                          proj=args.proj, learn_p=args.learn_p, multires=args.multires,
                          proj_init=args.proj_init, proj_shrinkage=args.proj_shrinkage)
    if is_main_process():
        print(f"wrote {last} (evaluate it with: deepret eval --model {last} --dataset ... --root ...)")
    return 0


def cmd_whiten(args) -> int:
    from deepret.datasets import load_labelled
    from deepret.models import get_model, save
    from deepret.train.whitening import learn_whitening

    data = load_labelled(args.train, args.train_root)
    net = get_model(args.model, weights=args.weights)
    learn_whitening(net, data, args.method, args.dim, args.size, args.shrinkage, args.device, args.workers,
                    precision=args.precision)
    save(net, args.out)
    print(f"wrote {args.out}: {net.meta['name']} + {args.method} whitening to {net.dim}-d, learned on {len(data)} images")
    return 0


def cmd_triplets(args) -> int:
    from deepret.viz.triplets import triplets_figure

    triplets_figure(args.run / "tuples.jsonl", args.out, epoch=args.epoch, n=args.n)
    print(f"wrote {args.out}")
    return 0


def cmd_study(args) -> int:
    from deepret.study import config_from_args, run_study

    report = run_study(config_from_args(args))
    print(f"wrote {report} (and results.json beside it)")
    return 0
