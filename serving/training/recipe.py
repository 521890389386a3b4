"""The command-line recipe shared by the scripts that train a detector on ``dataset synth`` data.

``bench/bench_training.py`` (the 10-minute training benchmark) and ``evals/mvi_defect/build_model.py`` (the
committed defect model) train the same way and differ only in their defaults: both take the options of
:func:`add_training_options`, load the splits with :func:`load_splits` and build their parameters with
:func:`train_params`. ``--max-iters`` is also accepted as ``--iters``.
"""
import time

from serving.training.params import EXPANSIONS, TrainParams


def add_training_options(parser, *, n, max_iters, snapshot, max_iters_help=None):
    """Add the data and training options with these defaults (the rest are common to both scripts)."""
    parser.add_argument("--n", type=int, default=n, help="images in all (70/15/15 train/val/test)")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and augmentation seed")
    parser.add_argument("--max-iters", "--iters", dest="max_iters", type=int, default=max_iters, help=max_iters_help)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--snapshot", type=int, default=snapshot, help="validate and checkpoint every N iterations")
    parser.add_argument("--net-model", default="res18")
    parser.add_argument("--scope", default="SMALL")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--texture-mix", type=float, default=TrainParams.texture_mix,
                        help="share of samples given another defect-free image's relief")
    parser.add_argument("--photometric", type=float, default=TrainParams.photometric,
                        help="share of samples given a photometric change")


def load_splits(n, seed):
    """``make_splits(n, seed)`` as ((train images, coco), (val ...), (test ...)), with a line saying what it made:
    train and val on the training surfaces, test on the held-out surfaces training never sees."""
    from serving.synth import make_splits

    started = time.perf_counter()
    splits = make_splits(n, seed)
    train, val, test = splits["train"], splits["val"], splits["test"]
    print(f"data: {len(train[0])} train / {len(val[0])} val / {len(test[0])} test (held-out surfaces) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    return train, val, test


def train_params(args, **overrides):
    """The TrainParams of the parsed options (every dataset expansion), with ``overrides`` (``device_num``)."""
    return TrainParams(**{"net_model": args.net_model, "model_scope": args.scope, "lr": args.lr,
                          "max_iters": args.max_iters, "batch_size": args.batch_size,
                          "snapshot_interval": args.snapshot, "input_size": args.input_size,
                          "expansions": EXPANSIONS, "seed": args.seed, "texture_mix": args.texture_mix,
                          "photometric": args.photometric, **overrides})
