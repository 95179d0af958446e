"""The README's commands and code are the ones that work.

Every Python block runs as written; the ```text fragments and the inline
calls of ``fj.`` run in the namespace the README's own examples set up; the
method table's signatures are checked against ``inspect.signature`` and every
row is built and applied as written.
"""

import ast
import functools
import inspect
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
  return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _run(block):
  namespace = {}
  exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def test_ci_runs_the_readme_test_command():
  commands = [b.strip() for b in _blocks("bash")]
  test_command = [c for c in commands if "pytest" in c]
  assert len(test_command) == 1
  # .ci/run creates its own venv, then runs the README's install + test part.
  tail = test_command[0].split("&& ", 2)[2]
  ci = (ROOT / ".ci" / "run").read_text()
  assert tail in ci.splitlines(), (tail, ci)


def test_readme_has_exactly_two_setup_commands():
  commands = [b.strip() for b in _blocks("bash")]
  assert len(commands) == 2, commands
  assert any("benchmarks.toy" in c for c in commands)


@functools.cache
def _python_namespaces():
  """Runs every Python block once; returns their namespaces in order."""
  return tuple(_run(block) for block in _blocks("python"))


def _weights(namespace):
  if "optimizer" in namespace:  # NNX
    return jnp.asarray(namespace["optimizer"].opt_state[0].weights[...])
  return namespace["state"][0].weights


def test_readme_python_runs_and_trains():
  namespaces = _python_namespaces()
  # The quick start, the linen and the NNX examples.
  assert len(namespaces) == 3
  assert "flax.linen" in _blocks("python")[1]
  assert "nnx.Optimizer" in _blocks("python")[2]
  for namespace in namespaces:
    first, losses = namespace["first"], namespace["losses"]
    assert bool((losses < 0.5 * first).all()), (first, losses)
    assert bool((_weights(namespace) > 0).all())
  # "hence the large values printed above": unnormalised weights.
  assert float(_weights(namespaces[0]).max()) > 10, _weights(namespaces[0])


def _fragment_namespace():
  """The names the README's fragments use, from its own examples."""
  quick, linen, _ = _python_namespaces()
  namespace = dict(quick)
  x, y = namespace["x"], namespace["y"]
  namespace.update(
      fj=fj, functools=functools, jax=jax, alpha=2.0,
      variables=linen["variables"], tree=linen["variables"],
      losses_fn=lambda params, batch: quick["task_losses"](params, *batch),
      weights_fn=functools.partial(fj.fairgrad_weights, alpha=2.0),
      batch=(x, y))
  return namespace


def test_readme_text_fragments_run():
  """The ```text fragments (weighted_grad, data_parallel) run in order."""
  fragments = [b for b in _blocks("text") if "fj." in b]
  assert len(fragments) >= 2
  namespace = _fragment_namespace()
  for fragment in fragments:
    exec(compile(fragment, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    assert np.all(np.isfinite(namespace["w"]))
  for a, b in zip(jax.tree.leaves(namespace["update"]),
                  jax.tree.leaves(namespace["params"])):
    assert a.shape == b.shape


def _inline_calls():
  """Inline code spans that call into fj (outside fenced blocks).

  Spans with '...' are placeholders in prose ('fairgrad(...)') and are not
  calls; every other such span must be a Python expression.
  """
  prose = re.sub(r"```.*?```", "", README, flags=re.S)
  spans = re.findall(r"`([^`\n]+)`", prose)
  return [s for s in spans if "fj." in s and "(" in s and "..." not in s]


def test_readme_inline_calls_run():
  calls = _inline_calls()
  assert len(calls) >= 6, calls
  namespace = _fragment_namespace()
  for call in calls:
    ast.parse(call, mode="eval")  # a SyntaxError names the span
    eval(call, namespace)  # pylint: disable=eval-used


# ----------------------------------------------------------------------------
# The method table


def _method_lines():
  section = README[README.index("## Methods"):]
  section = section[:section.index("\n## ", 1)]
  return [line for line in section.splitlines() if line.startswith("| `")]


def _method_rows():
  return [re.match(r"\| `([^`]+)`", row).group(1) for row in _method_lines()]


def _parse_signature(text):
  """'dwa(temperature=2.0, *, num_tasks, …)' -> name, [(name, kind,
  default or _REQUIRED)], whether '…' ends it."""
  name, args = re.fullmatch(r"(\w+)\((.*)\)", text).groups()
  listed, keyword_only, ellipsis = [], False, False
  for token in [t.strip() for t in args.split(",") if t.strip()]:
    if token == "*":
      keyword_only = True
    elif token == "…":
      ellipsis = True
    else:
      arg, _, default = token.partition("=")
      listed.append((arg, keyword_only,
                     ast.literal_eval(default) if default else _REQUIRED))
  return name, listed, ellipsis


_REQUIRED = object()
# A required argument gets 2 (a count of 2 tasks), except these; and the rows
# run on 2 tasks, except those that need more (Krum: K >= f + 3, the trimmed
# mean: K >= 2t + 1, with f = t = 2).
_REQUIRED_VALUES = {("constant", "weights"): (1.0, 0.5)}
_ROW_TASKS = {"krum": 5, "trimmed_mean": 5}


def _required(name, arg):
  return _REQUIRED_VALUES.get((name, arg), 2)


def test_method_table_lists_every_factory():
  names = [_parse_signature(row)[0] for row in _method_rows()]
  assert len(names) == len(set(names)) == 34, names
  for name in names:
    assert name in fj.__all__, name
  # Exactly the exported factories: each weighting's, GradDrop, MoCo,
  # ExcessMTL and the trimmed mean.
  factories = {n[:-len("_weighting")] for n in fj.__all__
               if n.endswith("_weighting")} | {"graddrop", "moco",
                                                     "excess_mtl",
                                                     "trimmed_mean"}
  assert set(names) == factories, set(names) ^ factories


def test_method_table_modes_column():
  """Every Weighting runs stacked, Gram-only and representation-level
  (tests/test_weighting.py runs each); GradDrop, not a weighting, stacked
  only. The column says so, row by row."""
  for row in _method_lines():
    name = re.match(r"\| `(\w+)\(", row).group(1)
    modes = row.split(" | ")[2]
    if hasattr(fj, f"{name}_weighting"):
      assert modes == "stacked, Gram-only, representation", row
    else:
      assert modes == "stacked only", row


@pytest.mark.parametrize("row", _method_rows())
def test_method_table_signature_is_the_real_one(row):
  name, listed, ellipsis = _parse_signature(row)
  factory = getattr(fj, name)
  parameters = inspect.signature(factory).parameters
  kinds = {p.name: p.kind for p in parameters.values()}
  # Every listed argument exists, on the right side of '*', with the real
  # default; the positional ones are all listed, in order.
  for arg, keyword_only, default in listed:
    assert arg in parameters, (row, arg)
    assert (kinds[arg] == inspect.Parameter.KEYWORD_ONLY) == keyword_only, (
        row, arg, kinds[arg])
    if default is not _REQUIRED:
      assert parameters[arg].default == default, (row, arg)
  positional = [p.name for p in parameters.values()
                if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
  assert [a for a, kw, _ in listed if not kw] == positional, row
  if not ellipsis:
    assert {a for a, _, _ in listed} == set(parameters), row
  # Required arguments: listed without a default, and really required (no
  # default, or the factory refuses to run without it).
  required = {a for a, _, d in listed if d is _REQUIRED}
  for p in parameters.values():
    if p.default is inspect.Parameter.empty:
      assert p.name in required, (row, p.name)
  for arg in required:
    if parameters[arg].default is not inspect.Parameter.empty:
      with pytest.raises((TypeError, ValueError), match=arg):
        factory(**{a: _required(name, a) for a in required if a != arg})
  # Not marked required: the factory builds without it.
  factory(**{a: _required(name, a) for a in required})


@pytest.mark.parametrize("row", _method_rows())
def test_method_table_row_builds_and_updates(row):
  """The row as written (required arguments given 2 tasks) gives an
  aggregator that maps stacked gradients to a finite update."""
  name, listed, _ = _parse_signature(row)
  kwargs = {a: (_required(name, a) if d is _REQUIRED else d)
            for a, _, d in listed}
  aggregator = getattr(fj, name)(**kwargs)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  k = _ROW_TASKS.get(name, 2)
  more = np.random.default_rng(0).standard_normal((k - 2, 3))
  grads = {"w": jnp.concatenate([
      jnp.array([[1.0, 0.5, 0.0], [-0.3, 1.0, 2.0]]),
      jnp.asarray(more, jnp.float32)])}
  state = aggregator.init(params)
  update, _ = aggregator.update(grads, state, params,
                                losses=jnp.linspace(1.0, 3.0, k))
  assert update["w"].shape == (3,)
  assert np.all(np.isfinite(update["w"])), (row, update)
