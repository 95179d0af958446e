"""Command-line helpers shared by the benchmark scripts.

Every script validates its arguments before any training or timing: counts
must be positive and ``--out`` must be a folder that can be written, so that a
typo fails at once rather than after the whole run. The training benchmarks
(``multidigits``, ``synthetic``) share one set of options on top of these:
:func:`argument_parser`, :func:`parse_args`, :func:`chosen_methods`.
"""

import argparse
import os
import tempfile
import textwrap

from benchmarks import _methods

__all__ = ["HelpFormatter", "QUICK_METHODS", "QUICK_NOTICE",
           "argument_parser", "chosen_methods", "make_out_dir", "parse_args",
           "positive_float", "positive_int", "print_wrapped", "progress_flag"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
  """``--help`` with the module docstring as written and every default shown.

  Defaults of None or False (flags, and options whose default depends on
  another option) are left to the option's own sentence.
  """

  def _get_help_string(self, action):
    if action.default is None or action.default is False:
      return action.help
    return super()._get_help_string(action)


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1 (counts of seeds, steps, repeats...)."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected an integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(
        f"must be a positive count (1 or more), got {value}")
  return value


def make_out_dir(parser, out) -> None:
  """Creates ``--out`` and checks that a file can be written there, before
  any training: a bad path is refused at once, not after the whole run."""
  try:
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
      pass
  except OSError as e:
    parser.error(f"--out {out}: cannot create or write to this folder"
                 f" ({e.strerror or e}).")


def positive_float(text: str) -> float:
  """argparse type: a finite float > 0 (learning rates, tolerances)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected a number, got {text!r}") from None
  if not 0 < value < float("inf"):
    raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {value}")
  return value


def print_wrapped(text: str, width: int = 120) -> None:
  """Prints a paragraph wrapped to ``width`` columns."""
  print(textwrap.fill(text, width))


# ----------------------------------------------------------------------------
# The training benchmarks' options


QUICK_METHODS = "STL,LS,FairGrad α=2"
QUICK_NOTICE = ("smoke run (--quick): few steps on a small dataset; the"
                " numbers are not meaningful.")


def argument_parser(doc: str, default_out: str):
  """The options every training benchmark takes (``doc``: the module's
  docstring, shown by ``--help``)."""
  p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
  p.add_argument("--out", default=default_out,
                 help="folder for table.md, table.csv and the figure; created"
                 " (or refused) before any training.")
  p.add_argument("--quick", action="store_true",
                 help="smoke run for CI: a few steps on a small dataset, two"
                 " seeds, and only STL, LS and FairGrad α=2 unless --methods"
                 " is given. Its numbers are not meaningful.")
  p.add_argument("--seeds", type=positive_int, default=None,
                 help="number of seeds (initial weights and minibatch"
                 " order); 3 by default, 2 with --quick.")
  p.add_argument("--steps", type=positive_int, default=None,
                 help="Adam steps per run, rounded down to a multiple of the"
                 " progress chunk; the benchmark's own number by default.")
  p.add_argument("--methods", default=None,
                 help="comma-separated method names, e.g. 'STL,LS,FairGrad"
                 " α=2' (spaces ignored); all by default. STL must be among"
                 " them: Δm%% is measured against it.")
  p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                 help="tqdm progress bar on stderr (auto: only on a"
                 " terminal).")
  return p


def parse_args(parser, argv):
  """Parses and validates, and creates ``--out``, before any training."""
  args = parser.parse_args(argv)
  make_out_dir(parser, args.out)
  return args


def chosen_methods(parser, args):
  """The methods of ``--methods`` (``--quick``: :data:`QUICK_METHODS`), STL
  checked up front."""
  methods = _methods.select_methods(  # unknown name: SystemExit, the choices
      _methods.default_methods(),
      args.methods or (QUICK_METHODS if args.quick else None))
  if _methods.STL not in [m.name for m in methods]:
    parser.error(f"--methods {args.methods!r} lacks {_methods.STL}: Δm% and"
                 " the per-task columns are relative to single-task training,"
                 f" so add {_methods.STL} to the list.")
  return methods


def progress_flag(args) -> bool | None:
  """``--progress`` as :func:`benchmarks._training.run_benchmark` takes it."""
  return {"auto": None, "on": True, "off": False}[args.progress]
