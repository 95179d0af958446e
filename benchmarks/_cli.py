"""Command-line helpers shared by the benchmark scripts.

Every script validates its arguments before any training or timing: counts
must be positive and ``--out`` must be a folder that can be written, so that a
typo fails at once rather than after the whole run.
"""

import argparse
import os
import tempfile
import textwrap

__all__ = ["HelpFormatter", "make_out_dir", "positive_float", "positive_int",
           "print_wrapped"]


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
