"""Command line: ``python -m benchmarks.paper BENCHMARK --data DIR ...``."""

import argparse
import dataclasses
import json
import os
import tempfile

from benchmarks.paper import protocols

BENCHMARKS = tuple(protocols.PROTOCOLS)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m benchmarks.paper",
      description="Train one method on one of the paper's four supervised"
      " benchmarks with the authors' protocol (model, optimiser, schedule,"
      " batch size, epochs, metrics, model selection), checkpointing every"
      " epoch, and print the paper's table with our row beside its rows.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("benchmark", choices=BENCHMARKS,
                 help="The benchmark (the protocol of the authors' code for"
                 " it is in benchmarks/paper/protocols.py).")
  p.add_argument("--data", default=None,
                 help="The dataset in its published layout: MTAN's .npy"
                 " folders (nyuv2, cityscapes), CelebA's release folder, or"
                 " qm9.npz (or its folder). Not needed with --profile.")
  p.add_argument("--method", default="FairGrad",
                 help="The method, by its name in the paper's tables or its"
                 " fairgrad_jax factory name: " + ", ".join(
                     m.name for m in protocols.METHODS) + ".")
  p.add_argument("--alpha", type=float, default=protocols.DEFAULT_ALPHA,
                 help="FairGrad's α (2 in every run of the authors).")
  p.add_argument("--seed", type=int, default=0,
                 help="Seed of the initial weights, data order, augmentation"
                 " and (QM9) split.")
  p.add_argument("--out", default=None,
                 help="Output folder for checkpoints/, log.jsonl,"
                 " results.json and table.md; None:"
                 " results/paper/BENCHMARK/METHOD-seedS.")
  p.add_argument("--resume", action="store_true",
                 help="Continue the run whose checkpoints are in --out; the"
                 " result is identical to an uninterrupted run.")
  p.add_argument("--epochs", type=int, default=None,
                 help="Training epochs; None: the protocol's (NYU-v2 and"
                 " Cityscapes 200, CelebA 15, QM9 300).")
  p.add_argument("--batch-size", type=int, default=None,
                 help="Minibatch size for training and evaluation, and the"
                 " --profile batch; None: the protocol's (NYU-v2 2,"
                 " Cityscapes 8, CelebA 256, QM9 120).")
  p.add_argument("--model-scale", type=int, default=1,
                 help="Divide every layer width by this (1: the paper's"
                 " models; larger values are for smoke tests).")
  p.add_argument("--main-task", type=int, default=0,
                 help="The task trained by --method STL (single-task"
                 " learning, the authors' 'stl').")
  p.add_argument("--qm9-split", type=int, nargs=2, default=None,
                 metavar=("VAL", "TEST"),
                 help="QM9's validation and test sizes; None: the"
                 " protocol's 10000 10000.")
  p.add_argument("--stl", default=None,
                 help="JSON file with STL metrics to compute Δm%% against"
                 " (a list, or {'metrics': [...]} as in results.json); None:"
                 " the STL constants of the authors' code (CelebA has"
                 " none).")
  p.add_argument("--profile", action="store_true",
                 help="Time training steps (LS, FairGrad stacked, FairGrad"
                 " Gram-only) at the real model and input sizes on"
                 " synthetic tensors instead of training; with torch"
                 " installed (.[peer]), the authors' PyTorch LS and"
                 " FairGrad steps beside them.")
  p.add_argument("--profile-steps", type=int, default=3,
                 help="Timed steps per variant in --profile (after one"
                 " compiling step).")
  p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                 help="Per-epoch tqdm progress bars and epoch summaries"
                 " (auto: bars only on a terminal).")
  return p


def _fail(p: argparse.ArgumentParser, message: str):
  p.error(message)


def validate(p: argparse.ArgumentParser, args) -> None:
  """Checks every argument before anything is built or trained."""
  for name in ("epochs", "batch_size", "model_scale", "profile_steps"):
    value = getattr(args, name)
    if value is not None and value < 1:
      _fail(p, f"--{name.replace('_', '-')} must be > 0, got {value}.")
  if args.seed < 0:
    _fail(p, f"--seed must be >= 0, got {args.seed}.")
  if not args.alpha >= 0:
    _fail(p, f"--alpha must be >= 0, got {args.alpha}.")
  try:
    spec = protocols.find_method(args.method)
  except ValueError as error:
    _fail(p, str(error))
  protocol = protocols.PROTOCOLS[args.benchmark]
  if spec.factory is None and not 0 <= args.main_task < protocol.num_tasks:
    _fail(p, f"--main-task must be in 0..{protocol.num_tasks - 1}, got"
          f" {args.main_task}.")
  if args.qm9_split is not None:
    if args.benchmark != "qm9":
      _fail(p, "--qm9-split applies to qm9 only.")
    if min(args.qm9_split) < 1:
      _fail(p, f"--qm9-split sizes must be > 0, got {args.qm9_split}.")
  if args.profile:
    return
  if args.data is None:
    _fail(p, "--data is required (unless --profile).")
  if not os.path.exists(args.data):
    _fail(p, f"--data {args.data!r} does not exist.")
  if args.stl is not None:
    from benchmarks.paper import report  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(args.stl):
      _fail(p, f"--stl {args.stl!r} is not a file.")
    try:
      report.load_stl(args.stl, protocol)
    except (ValueError, json.JSONDecodeError) as error:
      _fail(p, str(error))
  if args.out is None:
    args.out = os.path.join("results", "paper", args.benchmark,
                            f"{spec.name}-seed{args.seed}")
  try:
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryFile(dir=args.out):
      pass
  except OSError as error:
    _fail(p, f"--out {args.out!r} is not writable: {error}")
  if args.resume and not os.path.isdir(os.path.join(args.out, "checkpoints")):
    _fail(p, f"--resume: no checkpoints in {args.out!r}.")


def main(argv=None) -> dict | None:
  p = parser()
  args = p.parse_args(argv)
  validate(p, args)
  # Imported after validation: JAX starts up only for a valid command.
  from benchmarks.paper import report  # pylint: disable=g-import-not-at-top
  from benchmarks.paper import train  # pylint: disable=g-import-not-at-top
  protocol = protocols.PROTOCOLS[args.benchmark]
  progress = {"auto": None, "on": True, "off": False}[args.progress]

  if args.profile:
    from benchmarks.paper import profile  # pylint: disable=g-import-not-at-top
    if args.batch_size is not None:
      protocol = dataclasses.replace(protocol, batch_size=args.batch_size)
    rows = profile.profile(protocol, alpha=args.alpha,
                           steps=args.profile_steps,
                           model_scale=args.model_scale)
    from benchmarks.paper import torch_profile  # pylint: disable=g-import-not-at-top
    if torch_profile.available():
      rows += torch_profile.profile(
          args.benchmark, batch_size=protocol.batch_size,
          steps=args.profile_steps, alpha=args.alpha,
          model_scale=args.model_scale)
    else:
      print("(torch is not installed: the authors' PyTorch step is not"
            " timed; pip install -e \".[peer]\" adds it)")
    print(profile.markdown(protocol, rows, model_scale=args.model_scale,
                           steps=args.profile_steps))
    return None

  config = train.RunConfig(
      benchmark=args.benchmark, data=args.data, method=args.method,
      out=args.out, alpha=args.alpha, seed=args.seed, epochs=args.epochs,
      batch_size=args.batch_size, model_scale=args.model_scale,
      main_task=args.main_task,
      qm9_split=tuple(args.qm9_split) if args.qm9_split else None,
      resume=args.resume, progress=progress)
  result = train.run(config)
  stl = report.load_stl(args.stl, protocol) if args.stl else None
  result.update(report.summarize(protocol, result, stl))
  table = report.markdown(protocol, result, stl)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  return result


if __name__ == "__main__":
  main()
