"""Prepare an LRA dataset once (before multi-process training):

    python -m experiments.data.lra --dataset=lra_listops --tfds_config=release \
        --manual_dir=/data/lra --data_dir=/data/tfds
    python -m experiments.data.lra --dataset=lra_pathfinder32 --tfds_config=generated --workers=16
"""

from __future__ import annotations

import argparse

from experiments.data import lra


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.data.lra", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=sorted(lra.BUILDERS))
    ap.add_argument("--tfds_config", default="release")
    ap.add_argument("--data_dir", default="")
    ap.add_argument("--manual_dir", default="")
    ap.add_argument("--num_examples", default="", help="train,validation,test sizes of a generated config")
    ap.add_argument("--workers", type=int, default=0, help="processes for generated Pathfinder (0: all cores)")
    args = ap.parse_args(argv)
    cfg = dict(
        tfds_config=args.tfds_config,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        num_examples=tuple(int(n) for n in args.num_examples.split(",")) if args.num_examples else (),
    )
    cls = lra.BUILDERS[args.dataset]
    cls.num_workers = args.workers  # read by the Pathfinder builders' generated configs
    builder = lra.prepare(args.dataset, cfg)
    for split, info in builder.info.splits.items():
        print(f"{args.dataset}/{builder.builder_config.name} {split}: {info.num_examples} examples in {builder.data_dir}")


if __name__ == "__main__":
    main()
