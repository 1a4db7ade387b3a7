"""``python -m orchestrator {train,evaluate,generate,sweep,compare,pregenerate}``.

Heavy imports (torch, Ray, MLflow) happen inside the commands, so ``--help`` and input
errors answer quickly. A ``UserError`` becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.data import registry as datasets  # standard library only: --help stays fast
from orchestrator.errors import UserError


PROG = "python -m orchestrator"
EXIT_CODES = """exit status: 0 done; 2 an error that names its fix (bad input, a store that took no record, a full disk),
one line on stderr; 143 stopped by SIGTERM, 130 by SIGINT (Ctrl-C): for train, sweep and pregenerate the run is
KILLED with tag fsig.interrupted=true and the last line on stderr is the command that continues it (train --resume
RUN, sweep --resume NAME, or the same pregenerate command; evaluate and generate have no such handling yet: run them
again); 1 a bug (a traceback)."""


class _Parser(argparse.ArgumentParser):
    """One line and exit 2 instead of argparse's usage block; the hint names the command's own --help."""

    def error(self, message: str) -> None:  # ``self.prog`` is "python -m orchestrator [COMMAND]"
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # argparse reports arguments no parser took from the top-level parser, whose prog has no command:
        # name the command that was being parsed, so the hint is `python -m orchestrator train --help`.
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(ns, "command", None)
            raise UserError(f"unrecognized arguments: {' '.join(extras)} "
                            f"(see {self.prog}{' ' + command if command else ''} --help)")
        return ns


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///./mlflow.db, or $MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description="Few-shot image generation experiments on Ray, tracked in MLflow.",
                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="meta-train a method under Ray Train, then evaluate it on novel classes",
                        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("method", nargs="?", help="method key, e.g. figr")
    t.add_argument("--dataset", help=datasets.help_text())
    t.add_argument("--data-root", help="local folder holding the dataset's files")
    t.add_argument("--image-size", type=int)
    t.add_argument("--channels", type=int, choices=(1, 3), help="1 = grayscale, 3 = RGB")
    t.add_argument("--steps", type=int, help="meta-training steps (default 300 unless --budget-minutes)")
    t.add_argument("--budget-minutes", type=float, help="wall-clock budget of meta-training")
    t.add_argument("--seed", type=int, help="task-sampling seed")
    t.add_argument("--split-seed", type=int, help="seed of the base/val/novel class split")
    t.add_argument("--workers", type=int, default=1, help="Ray Train workers (data-parallel)")
    t.add_argument("--cpus-per-worker", type=float, default=1)
    t.add_argument("--gpus-per-worker", type=float, default=0, help="> 0 trains on GPUs with NCCL")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config value")
    t.add_argument("--backbone", choices=("conv4", "resnet18"),
                   help="few-shot classifiers (protonet, metairnet): the feature extractor (default conv4)")
    t.add_argument("--backbone-weights", metavar="FILE",
                   help="with --backbone resnet18: a local torchvision ImageNet state dict (default: random init)")
    t.add_argument("--experiment", default=None, help="MLflow experiment name")
    t.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    t.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth for fid_inception")
    t.add_argument("--lpips-weights", metavar="FILE",
                   help="torchvision ImageNet weights of alexnet/vgg16/squeezenet1_1 (e.g. alexnet-owt-7be5be79.pth): "
                        "adds lpips_diversity* (LPIPS, Zhang et al. 2018) to the evaluation (= --set lpips_weights=FILE)")
    t.add_argument("--max-failures", type=int, default=1, help="worker failures survived (restart from checkpoint)")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a train run from its last checkpoint")
    t.add_argument("--replicates", type=int, default=1,
                   help="train N seeds (seed, seed+1, ...) as concurrent Ray Tune trials under one MLflow parent run "
                        "holding each metric's mean and 95%% interval over seeds and classes")
    _common(t)

    e = sub.add_parser("evaluate", help="run the evaluation protocol on a train run's novel classes")
    e.add_argument("run_id")
    e.add_argument("--eval-seed", "--eval-seeds", dest="eval_seed", type=int, nargs="+", metavar="SEED",
                   help="seed(s) of the shots permutation and sampling; several (e.g. 0 1 2) record each seed's "
                        "metrics and the mean and 95%% interval over seeds and classes")
    e.add_argument("--n-generate", type=int, help="images generated per novel class (default 128)")
    e.add_argument("--inception-weights")
    e.add_argument("--data-root", help="the folder the run's dataset moved to (checked against the digests it recorded)")
    e.add_argument("--protocol", choices=("default", "lofgan"), default="default",
                   help="lofgan: LoFGAN's main_metric.py procedure (orchestrator/evaluation/lofgan.py)")
    e.add_argument("--variant", metavar="KEY=VALUE,...",
                   help="with --protocol lofgan: preset=published|seeded|f2dgan and overrides seed, permute, reals, "
                        "pool, shots, fakes, resize, fid (e.g. preset=seeded,fakes=256)")
    _common(e)

    g = sub.add_parser("generate", help="adapt a trained run on your images and write new ones")
    g.add_argument("run_id")
    g.add_argument("--images", nargs="+", required=True, help="a few images of one new class")
    g.add_argument("--n", type=int, default=16)
    g.add_argument("--out", type=Path, default=Path("grid.png"))
    g.add_argument("--save-images", type=Path, help="also write each image into this folder")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--adapt-steps", type=int, help="adaptation steps (default: the run's)")
    g.add_argument("--interpolate", action="store_true",
                   help="write a strip of --n images interpolating between two memory slots (methods with a memory, e.g. mfh)")
    _common(g)

    from orchestrator import compare, sweep  # light modules: heavy imports live inside their run()

    sw = sub.add_parser("sweep", help="search a method's hyperparameters with Ray Tune + Optuna, nested in MLflow",
                        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_arguments(sw)
    _common(sw)
    cp = sub.add_parser("compare", help="table and plot of the best trial per method and dataset, from MLflow")
    compare.add_arguments(cp)
    _common(cp)
    from orchestrator import pregenerate  # light: torch, Ray and pyarrow are imported inside

    pg = sub.add_parser("pregenerate", help="FinetuneGAN variants of support images by a pool of Ray actors, to Parquet",
                        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pregenerate.add_arguments(pg)
    _common(pg)
    return ap


def _dispatch(args: argparse.Namespace) -> dict:
    from orchestrator import pipeline, tracking

    uri = args.tracking_uri or tracking.default_tracking_uri()
    tracking.check_tracking_uri(uri)  # every command, before Ray starts or anything is recorded
    if args.command == "train":
        if not args.method and not args.resume:
            import methods

            raise UserError(f"which method? e.g. python -m orchestrator train figr ({', '.join(methods.available())})")
        steps = args.steps
        if steps is None and args.budget_minutes is None:
            steps = 300
        overrides = {"dataset": args.dataset, "data_root": args.data_root, "image_size": args.image_size,
                     "channels": args.channels, "steps": steps if steps is not None else 0,
                     "budget_minutes": args.budget_minutes, "seed": args.seed, "split_seed": args.split_seed}
        if args.resume:
            overrides = {"steps": args.steps, "budget_minutes": args.budget_minutes}
        from orchestrator.kinds import is_classifier
        from orchestrator.lifecycle import Scale

        sets = list(args.set)
        if args.backbone or args.backbone_weights:  # shortcuts for --set backbone=... / backbone_weights=...
            if args.resume or not is_classifier(args.method):
                raise UserError("--backbone and --backbone-weights configure the few-shot classifiers: use them with "
                                "train protonet or train metairnet")
            sets = [*([f"backbone={args.backbone}"] if args.backbone else []),
                    *([f"backbone_weights={args.backbone_weights}"] if args.backbone_weights else []), *sets]
        if args.lpips_weights:  # a shortcut for --set lpips_weights=FILE, recorded as a param like every value
            sets = [f"lpips_weights={args.lpips_weights}", *sets]
        scale = Scale(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.max_failures)
        if args.replicates != 1:
            if args.resume:
                raise UserError("--replicates starts new runs: drop --resume (resume each child run by its id)")
            from orchestrator.replicates import run_replicates

            return run_replicates(args.method, overrides, sets, n=args.replicates, scale=scale, uri=uri,
                                  experiment=args.experiment or tracking.DEFAULT_EXPERIMENT, address=args.address,
                                  inception_weights=args.inception_weights)
        return pipeline.run_train(args.method, overrides, sets, scale=scale, uri=uri,
                                  experiment=args.experiment or tracking.DEFAULT_EXPERIMENT, address=args.address,
                                  inception_weights=args.inception_weights, resume=args.resume)
    if args.command == "evaluate" and args.protocol == "lofgan":
        if args.n_generate is not None:
            raise UserError("--n-generate: the LoFGAN protocol's fakes per class are --variant fakes=N (default 128)")
        return pipeline.run_evaluate_lofgan(args.run_id, uri=uri, seed=args.eval_seed, variant=args.variant,
                                            inception_weights=args.inception_weights, data_root=args.data_root)
    if args.command == "evaluate" and args.variant:
        raise UserError("--variant applies to --protocol lofgan; add --protocol lofgan or drop --variant")
    if args.command == "evaluate":
        return pipeline.run_evaluate(args.run_id, uri=uri, seed=args.eval_seed, n_generate=args.n_generate,
                                     inception_weights=args.inception_weights, data_root=args.data_root)
    if args.command == "sweep":
        from orchestrator import sweep

        return sweep.run(args, uri)
    if args.command == "compare":
        from orchestrator import compare

        return compare.run(args, uri)
    if args.command == "pregenerate":
        from orchestrator import pregenerate

        return pregenerate.run(args, uri)
    return pipeline.run_generate(args.run_id, args.images, uri=uri, n=args.n, out=args.out, seed=args.seed,
                                 save_images=args.save_images, steps=args.adapt_steps, interpolate=args.interpolate)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        out = _dispatch(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except OSError as err:  # a full disk or an unwritable place outside a run's own record (which names its resume)
        from orchestrator.errors import STORAGE_ERRNOS

        if err.errno not in STORAGE_ERRNOS:
            raise
        import os

        where = err.filename or "a folder this command writes to (the temp folder, FSIG_STORAGE, the artifact store)"
        print(f"error: {where}: [Errno {err.errno}] {os.strerror(err.errno)}: free space there or fix its permissions, "
              f"then run the same command again (a train run continues with train --resume RUN_ID)",
              file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as err:  # SIGTERM or Ctrl-C (orchestrator.interrupt): the line says how to continue
        from orchestrator.interrupt import Interrupted

        code = err.exit_code if isinstance(err, Interrupted) else 130
        print(str(err) or "interrupted before a run was recorded: nothing to continue",
              file=sys.stderr, flush=True)
        return code
    if args.json:
        from orchestrator.pipeline import print_json

        print_json(out)
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0
