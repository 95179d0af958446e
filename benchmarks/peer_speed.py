"""fairgrad_jax against TorchJD and plain PyTorch on the same CPU.

Two measurements, each for K ∈ {2, 10, 40} tasks, every configuration timed
in the same process, calls interleaved (one call of each configuration per
round, so that a change of machine load hits them all alike), warm-up
excluded (the first call, compile time included, is reported apart), medians
and interquartile ranges over ``--repeats`` rounds:

1. Aggregation of a (K, P) Jacobian (P = ``--params``, 1M by default):
   ``jax.jit(fairgrad_jax.fairgrad(α).update)`` (warm-started from the
   previous call's weights, as in training) against TorchJD's
   ``FairGrad(α)``; ``fairgrad_jax.upgrad`` (its dual-cone QP solved in
   the jitted graph) against TorchJD's ``UPGrad`` (quadprog on the host);
   linear scalarization on both sides; and the Gram
   product alone, ``fairgrad_jax.gram_matrix`` against XLA's plain
   ``J @ J.T`` and torch's ``J @ J.T``.
2. A full training step (forward, gradients, update, Adam) of the same model
   in both frameworks, with the same initial weights: an MLP trunk
   256 → 1024 → 1024 (ReLU) shared by K linear heads, batch 256, MSE per
   task. fairgrad_jax: linear scalarization (``jax.grad`` of the sum),
   stacked FairGrad (``fairgrad_jax.task_gradients`` or ``jax.jacrev``, then
   the ``fairgrad`` aggregator on the trunk, heads summed), Gram-only
   FairGrad (``weighted_grad`` with ``shared=`` the trunk, one chunk or
   ``chunk_size=1``), and the stacked and chunk-1 Gram-only steps again
   jitted with ``fairgrad_jax.lean_compiler_options()`` ("fj lean compile":
   XLA's previous CPU emitters, a fraction of the compile memory).
   PyTorch: plain ``loss.sum().backward()``, TorchJD's
   autojac (``mtl_backward`` + ``jac_to_grad`` with ``FairGrad``, heads
   summed) and autogram (``Engine`` on the trunk, ``FairGradWeighting``,
   ``losses.backward(weights)``).

``--memory`` adds the peak memory of a few steps at K = 40 (the largest of
``--tasks``), one fresh process per configuration: the process's peak RSS
minus its RSS after setup (imports, model, data, optimizer state), JAX's
compilation included (memory freed after a step stays resident, so a
baseline taken after a warm-up step would hide the step); the steady
state, the peak of as many more steps after ``malloc_trim`` has handed the
freed memory back (XLA's compiler leaves some 200 MB of freed arenas
resident, which later steps reuse unseen), both frameworks alike; and, for
JAX, XLA's own count of the compiled step's buffers.

Both frameworks get the same CPUs: ``--threads N`` pins the process to N
CPUs (``os.sched_setaffinity``, which XLA's thread pool follows) and sets
``torch.set_num_threads(N)``. torch's OpenMP threads are made to sleep when
idle (``OMP_WAIT_POLICY=PASSIVE``, unless the variable is set already):
by default they spin for a while after each torch call, on the same CPUs,
and slowed the JAX call interleaved after it (K = 2 Gram product: 4.7 ms
against 3.0 ms with them asleep, torch's own time unchanged at 2.2 ms).
The load average is printed before and after: other processes on the
machine slow both sides, and the ratios of one run are more telling than
its absolute times.

torch and torchjd are optional (``pip install -e ".[peer]"``); without them
(or with ``--ours-only``) only the fairgrad_jax side runs, the script says
so, and exits 0.

    python -m benchmarks.peer_speed [--tasks 2 10 40] [--repeats 20]
        [--threads 2] [--memory] [--quick] [--ours-only]
"""

import argparse
import ctypes
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fairgrad_jax as fj

from benchmarks import _cli

SHARED = {"trunk": True, "heads": False}


# ----------------------------------------------------------------- model


def init_params(key, d_in, hidden, k):
  """MLP trunk d_in → hidden → hidden and K linear heads, numpy float32."""
  k1, k2, k3, k4, k5 = jax.random.split(key, 5)
  u = lambda key, shape, fan_in: np.asarray(jax.random.uniform(
      key, shape, jnp.float32, -1.0, 1.0)) / np.sqrt(fan_in)
  return {
      "trunk": {"w1": u(k1, (d_in, hidden), d_in),
                "b1": u(k2, (hidden,), d_in),
                "w2": u(k3, (hidden, hidden), hidden),
                "b2": u(k4, (hidden,), hidden)},
      "heads": {"w": u(k5, (k, hidden), hidden),
                "b": np.zeros((k,), np.float32)},
  }


def losses_fn(params, x, y):
  """(K,) MSE losses, one per task; y is (batch, K)."""
  t = params["trunk"]
  h = jax.nn.relu(x @ t["w1"] + t["b1"])
  h = jax.nn.relu(h @ t["w2"] + t["b2"])
  pred = h @ params["heads"]["w"].T + params["heads"]["b"]
  return jnp.mean((pred - y) ** 2, axis=0)


def data(seed, batch, d_in, k):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((batch, d_in), np.float32),
          rng.standard_normal((batch, k), np.float32))


# ----------------------------------------------------- fairgrad_jax side


# fairgrad_jax steps jitted with ``fj.lean_compiler_options()``.
LEAN = "fj lean compile, "


def jax_steps(params_np, x, y, alpha, lr) -> dict[str, Callable[[], Any]]:
  """One closure per fairgrad_jax configuration: a full Adam step each."""
  k = y.shape[1]
  x, y = jnp.asarray(x), jnp.asarray(y)
  adam = optax.adam(lr)
  steps = {}

  def make(name, grad_and_opt, lean=False):
    step_fn, opt = grad_and_opt
    state = {"params": jax.tree.map(jnp.asarray, params_np)}
    state["opt"] = opt.init(state["params"])
    state["extra"] = None
    jitted = jax.jit(step_fn, compiler_options=(
        fj.lean_compiler_options() if lean else None))

    def run():
      state["params"], state["opt"], state["extra"] = jitted(
          state["params"], state["opt"], state["extra"], x, y)
      return jax.block_until_ready(state["params"])

    def xla_bytes():
      """XLA's own count of the compiled step's buffers (args + out + temp)."""
      m = jitted.lower(state["params"], state["opt"], state["extra"], x,
                       y).compile().memory_analysis()
      return (m.temp_size_in_bytes + m.argument_size_in_bytes
              + m.output_size_in_bytes - m.alias_size_in_bytes)

    run.xla_bytes = xla_bytes
    steps[name] = run

  def ls():
    def step(params, opt_state, extra, x, y):
      grads = jax.grad(lambda p: jnp.sum(losses_fn(p, x, y)))(params)
      updates, opt_state = adam.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, extra
    return step, adam

  def stacked(grads_fn):
    opt = optax.chain(fj.fairgrad(alpha, num_tasks=k, shared=SHARED), adam)

    def step(params, opt_state, extra, x, y):
      grads = grads_fn(params, x, y)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, extra
    return step, opt

  def gram_only(chunk_size):
    grad_fn = fj.weighted_grad(
        losses_fn, functools.partial(fj.fairgrad_weights, alpha=alpha),
        shared=SHARED, chunk_size=chunk_size)

    def step(params, opt_state, weights, x, y):
      out = grad_fn(params, x, y, init=weights)  # warm start, as in training
      updates, opt_state = adam.update(out.update, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, out.weights

    return step, adam

  make("fj LS", ls())
  with_task_gradients = stacked(
      lambda p, x, y: fj.task_gradients(losses_fn)(p, x, y)[1])
  make("fj stacked (task_gradients)", with_task_gradients)
  make("fj stacked (jax.jacrev)", stacked(jax.jacrev(losses_fn)))
  make("fj Gram-only (one chunk)", gram_only(None))
  make("fj Gram-only (chunk 1)", gram_only(1))
  # The same steps compiled with fj.lean_compiler_options(): XLA's previous
  # CPU emitters, a fraction of the compile memory (a no-op off the CPU).
  make(LEAN + "stacked (task_gradients)", with_task_gradients, lean=True)
  make(LEAN + "Gram-only (chunk 1)", gram_only(1), lean=True)
  return steps


def jax_aggregations(jac_np, alpha) -> dict[str, Callable[[], Any]]:
  k = jac_np.shape[0]
  jac = {"w": jnp.asarray(jac_np)}
  out = {}
  for name, agg in (("fj LS aggregate", fj.linear_scalarization(num_tasks=k)),
                    ("fj.fairgrad aggregate", fj.fairgrad(alpha,
                                                          num_tasks=k)),
                    ("fj.upgrad aggregate", fj.upgrad(num_tasks=k))):
    update = jax.jit(agg.update)
    state = {"s": agg.init(None)}

    def run(update=update, state=state):
      d, state["s"] = update(jac, state["s"])
      return jax.block_until_ready(d)

    out[name] = run
  gram = jax.jit(fj.gram_matrix)
  plain = jax.jit(lambda j: jnp.dot(j, j.T,
                                    precision=jax.lax.Precision.HIGHEST))
  out["fj.gram_matrix"] = lambda: jax.block_until_ready(gram(jac))
  out["XLA J @ J.T"] = lambda: jax.block_until_ready(plain(jac["w"]))
  return out


# ------------------------------------------------------------ torch side


def torch_modules():
  """(torch, torchjd) or None when they are not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchjd  # pylint: disable=g-import-not-at-top
    from torchjd import aggregation, autogram, autojac  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None
  return torch, torchjd


def torch_model(torch, params_np):
  nn = torch.nn
  d_in, hidden = params_np["trunk"]["w1"].shape
  k = params_np["heads"]["w"].shape[0]
  trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(),
                        nn.Linear(hidden, hidden), nn.ReLU())
  # One module per head, as TorchJD's examples have them (mtl_backward
  # differentiates each task's loss with respect to its own head).
  head_list = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(k))
  with torch.no_grad():
    t = params_np["trunk"]
    trunk[0].weight.copy_(torch.from_numpy(t["w1"].T.copy()))
    trunk[0].bias.copy_(torch.from_numpy(t["b1"]))
    trunk[2].weight.copy_(torch.from_numpy(t["w2"].T.copy()))
    trunk[2].bias.copy_(torch.from_numpy(t["b2"]))
    for i, head in enumerate(head_list):
      head.weight.copy_(torch.from_numpy(params_np["heads"]["w"][i:i + 1]))
      head.bias.copy_(torch.from_numpy(params_np["heads"]["b"][i:i + 1]))

  class Heads(nn.Module):

    def __init__(self):
      super().__init__()
      self.heads = head_list

    def forward(self, features, y):  # K scalar losses, each its own graph
      return [((head(features)[:, 0] - y[:, i]) ** 2).mean()
              for i, head in enumerate(self.heads)]

  return trunk, Heads()


def torch_steps(torch, params_np, x, y, alpha, lr):
  from torchjd.aggregation import FairGrad, FairGradWeighting  # pylint: disable=g-import-not-at-top
  from torchjd.autogram import Engine  # pylint: disable=g-import-not-at-top
  from torchjd.autojac import jac_to_grad, mtl_backward  # pylint: disable=g-import-not-at-top

  x, y = torch.from_numpy(x), torch.from_numpy(y)
  steps = {}

  def ls():
    trunk, heads = torch_model(torch, params_np)
    opt = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=lr)

    def run():
      sum(heads(trunk(x), y)).backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
    return run

  def autojac():
    trunk, heads = torch_model(torch, params_np)
    opt = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=lr)
    aggregator = FairGrad(alpha)

    def run():
      features = trunk(x)
      mtl_backward(heads(features, y), features=features)
      jac_to_grad(list(trunk.parameters()), aggregator)
      opt.step()
      opt.zero_grad(set_to_none=True)
    return run

  def autogram():
    trunk, heads = torch_model(torch, params_np)
    opt = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=lr)
    engine = Engine(trunk, batch_dim=None)
    weighting = FairGradWeighting(alpha)

    def run():
      losses = torch.stack(heads(trunk(x), y))
      weights = weighting(engine.compute_gramian(losses))
      losses.backward(weights)
      opt.step()
      opt.zero_grad(set_to_none=True)
    return run

  steps["torch LS"] = ls()
  steps["TorchJD autojac FairGrad"] = autojac()
  steps["TorchJD autogram FairGrad"] = autogram()
  return steps


def torch_aggregations(torch, jac_np, alpha):
  from torchjd.aggregation import FairGrad, UPGrad  # pylint: disable=g-import-not-at-top
  jac = torch.from_numpy(jac_np)
  aggregator = FairGrad(alpha)
  out = {
      "torch LS aggregate": lambda: jac.sum(dim=0),
      "TorchJD FairGrad aggregate": lambda: aggregator(jac),
      "torch J @ J.T": lambda: jac @ jac.T,
  }
  try:
    upgrad = UPGrad()  # quadprog on the CPU
  except ImportError as error:  # torchjd[quadprog_projector] not installed
    print(f"TorchJD's UPGrad left out: {error}")
  else:
    out["TorchJD UPGrad aggregate"] = lambda: upgrad(jac)
  return out


# ---------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int):
  """{name: (first-call seconds, [seconds per call])}, calls interleaved."""
  first, times = {}, {name: [] for name in fns}
  for name, fn in fns.items():
    start = time.perf_counter()
    fn()  # compiles (JAX) and warms caches
    first[name] = time.perf_counter() - start
    fn()
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: (first[name], times[name]) for name in fns}


def _stats(times):
  q1, med, q3 = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
  return med, q3 - q1


def _version(dist):
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "?"


def _load():
  try:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
  except OSError:
    return "n/a"


def print_table(title, results, tasks):
  """Markdown: median (IQR) ms per K, and the first call apart."""
  names = list(results[tasks[0]])
  print(f"\n{title}\n")
  print("| configuration | " + " | ".join(
      f"K = {k}: median (IQR) ms" for k in tasks) + " | first call (compile"
        " + run) s, K = " + ", ".join(str(k) for k in tasks) + " |")
  print("|---|" + "---|" * len(tasks) + "---|")
  for name in names:
    cells, firsts = [], []
    for k in tasks:
      first, times = results[k][name]
      med, iqr = _stats(times)
      cells.append(f"{med:.1f} ({iqr:.1f})")
      firsts.append(f"{first:.2f}")
    print(f"| {name} | " + " | ".join(cells) + " | " + ", ".join(firsts)
          + " |")


def ratio_lines(results, tasks, all_tasks, pairs):
  """Rows 'label | slow / fast per K' (> 1: the second is faster)."""
  lines = []
  for label, slow, fast in pairs:
    cells, found = [], False
    for k in all_tasks:
      if k in tasks and slow in results[k] and fast in results[k]:
        r = _stats(results[k][slow][1])[0] / _stats(results[k][fast][1])[0]
        cells.append(f"{r:.2f}×")
        found = True
      else:
        cells.append("")
    if found:
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


# ---------------------------------------------------------------- memory


MEMORY_CONFIGS = ("fj LS", "fj stacked (task_gradients)",
                  "fj stacked (jax.jacrev)", "fj Gram-only (one chunk)",
                  "fj Gram-only (chunk 1)", LEAN + "stacked (task_gradients)",
                  LEAN + "Gram-only (chunk 1)", "torch LS",
                  "TorchJD autojac FairGrad", "TorchJD autogram FairGrad")


def _status_kib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise OSError(field)


def memory_child(args) -> None:
  """In a fresh process: RSS increase of one step of ``args.child``."""
  k = args.tasks[-1]
  params_np = init_params(jax.random.key(0), args.d_in, args.hidden, k)
  x, y = data(1, args.batch, args.d_in, k)
  if args.child.startswith("fj"):
    step = jax_steps(params_np, x, y, args.alpha, args.lr)[args.child]
  else:
    mods = torch_modules()
    if mods is None:
      print(json.dumps({"error": "torch/torchjd not installed"}))
      return
    mods[0].set_num_threads(args.threads)
    step = torch_steps(mods[0], params_np, x, y, args.alpha,
                       args.lr)[args.child]
  # Setup done (imports, model, data, optimizer state): the baseline. The
  # steps that follow include JAX's compilation (its memory is part of the
  # peak) because memory that XLA or malloc frees after a step stays
  # resident: a baseline taken after a warm-up step would hide the step.
  baseline = _status_kib("VmRSS")
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets the peak (VmHWM) to the current RSS
  except OSError:
    pass
  for _ in range(args.memory_steps):
    step()
  peak = _status_kib("VmHWM")
  result = {"increase_mb": (peak - baseline) / 1024}
  # The steady state: after those steps (JAX's compilation done, torch's
  # first-step allocations made), malloc_trim hands freed memory back to
  # the system, so that the steps that follow show what they allocate
  # (XLA's compiler keeps ~200 MB of freed arenas resident otherwise, which
  # later steps would reuse unseen). Both frameworks alike.
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    settled = _status_kib("VmRSS")
    for _ in range(args.memory_steps):
      step()
    result["step_mb"] = (_status_kib("VmHWM") - settled) / 1024
  except OSError:
    pass
  if hasattr(step, "xla_bytes"):
    result["xla_mb"] = step.xla_bytes() / 2**20
  print(json.dumps(result))


def memory_table(args, tasks_for_memory, have_torch):
  k = tasks_for_memory
  rows = []
  for name in MEMORY_CONFIGS:
    if not name.startswith("fj") and not have_torch:
      continue
    cmd = [sys.executable, "-m", "benchmarks.peer_speed", "--child", name,
           "--tasks", str(k), "--threads", str(args.threads),
           "--d-in", str(args.d_in), "--hidden", str(args.hidden),
           "--batch", str(args.batch), "--memory-steps",
           str(args.memory_steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    try:
      result = json.loads(proc.stdout.strip().splitlines()[-1])
      cells = ((f"{result['increase_mb']:.0f}",
                f"{result['step_mb']:.0f}" if "step_mb" in result else "",
                f"{result['xla_mb']:.0f}" if "xla_mb" in result else "")
               if "increase_mb" in result
               else (result.get("error", "?"), "", ""))
    except (IndexError, ValueError):
      cells = (f"failed: {proc.stderr.strip().splitlines()[-1:]}", "", "")
    rows.append((name, *cells))
  print(f"\nPeak memory of {args.memory_steps} steps, K = {k}, a fresh"
        " process per configuration: peak RSS minus RSS after setup (JAX's"
        " compilation included); the same for as many more steps after"
        " malloc_trim (the steady state: no compilation, freed arenas handed"
        " back); and XLA's count of the compiled step's buffers (MB)\n")
  print("| configuration | peak RSS increase (first steps) | steady-state"
        " step | XLA step buffers |\n|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  return rows


# ------------------------------------------------------------------ main


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.peer_speed", description=__doc__,
      formatter_class=_cli.HelpFormatter)
  parser.add_argument("--tasks", type=_cli.positive_int, nargs="+",
                      default=[2, 10, 40],
                      help="Numbers of tasks K to measure.")
  parser.add_argument("--repeats", type=_cli.positive_int, default=20,
                      help="Timed rounds (one call of every configuration"
                      " each) after the warm-up.")
  parser.add_argument("--params", type=_cli.positive_int, default=1_000_000,
                      help="Columns P of the (K, P) Jacobian that is"
                      " aggregated.")
  parser.add_argument("--d-in", type=_cli.positive_int, default=256,
                      help="Input width of the MLP.")
  parser.add_argument("--hidden", type=_cli.positive_int, default=1024,
                      help="Width of the MLP's two hidden layers.")
  parser.add_argument("--batch", type=_cli.positive_int, default=256,
                      help="Batch size of a training step.")
  parser.add_argument("--alpha", type=_cli.positive_float, default=2.0,
                      help="FairGrad's α on both sides.")
  parser.add_argument("--lr", type=_cli.positive_float, default=1e-4,
                      help="Adam's learning rate on both sides.")
  parser.add_argument("--threads", type=_cli.positive_int,
                      default=len(os.sched_getaffinity(0)),
                      help="CPUs given to both frameworks (process affinity"
                      " and torch.set_num_threads).")
  parser.add_argument("--skip", choices=("aggregation", "steps"),
                      nargs="*", default=[],
                      help="Measurements to leave out.")
  parser.add_argument("--memory", action="store_true",
                      help="Also measure the peak RSS increase of one step at"
                      " the largest K, a fresh process per configuration.")
  parser.add_argument("--memory-steps", type=_cli.positive_int, default=3,
                      help="Steps run while the peak RSS is watched.")
  parser.add_argument("--ours-only", action="store_true",
                      help="Run the fairgrad_jax side only, even when torch"
                      " and torchjd are installed.")
  parser.add_argument("--quick", action="store_true",
                      help="A tiny smoke run (small model and Jacobian, K = 3,"
                      " 3 rounds): checks that everything runs, says"
                      " nothing about speed.")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.tasks, args.repeats, args.params = [3], 3, 4096
    args.d_in, args.hidden, args.batch = 8, 16, 16
  if args.threads > len(os.sched_getaffinity(0)):
    parser.error(f"--threads {args.threads}: only"
                 f" {len(os.sched_getaffinity(0))} CPUs are available.")
  return args


def main(argv=None):
  args = parse_args(argv)
  # Before XLA's CPU client starts: its thread pool follows the affinity.
  cpus = sorted(os.sched_getaffinity(0))[:args.threads]
  os.sched_setaffinity(0, cpus)
  # Before torch loads libgomp, which reads it once (see the docstring).
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  if args.child:
    memory_child(args)
    return None
  mods = None if args.ours_only else torch_modules()
  if mods is None:
    print("torch and torchjd are " + ("left out (--ours-only)"
                                       if args.ours_only else
                                       "not installed (pip install -e"
                                       " '.[peer]')")
          + ": measuring the fairgrad_jax side only.")
  else:
    mods[0].set_num_threads(args.threads)
  torch = mods[0] if mods else None
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
        f" ({jax.default_backend()}), "
        + (f"torch {torch.__version__} with {torch.get_num_threads()} threads,"
           f" torchjd {_version('torchjd')}, "
           if torch else "")
        + f"{args.threads} CPUs, OMP_WAIT_POLICY"
        f" {os.environ['OMP_WAIT_POLICY']}; load average {_load()}")

  results = {"aggregation": {}, "steps": {}}
  for k in args.tasks:
    if "aggregation" not in args.skip:
      jac = np.random.default_rng(k).standard_normal(
          (k, args.params), np.float32)
      fns = jax_aggregations(jac, args.alpha)
      if torch:
        fns.update(torch_aggregations(torch, jac, args.alpha))
      results["aggregation"][k] = interleaved(fns, args.repeats)
    if "steps" not in args.skip:
      params_np = init_params(jax.random.key(0), args.d_in, args.hidden, k)
      x, y = data(1, args.batch, args.d_in, k)
      fns = jax_steps(params_np, x, y, args.alpha, args.lr)
      if torch:
        fns.update(torch_steps(torch, params_np, x, y, args.alpha, args.lr))
      results["steps"][k] = interleaved(fns, args.repeats)

  if results["aggregation"]:
    print_table(f"Aggregation of a (K, {args.params:,}) float32 Jacobian",
                results["aggregation"], args.tasks)
  if results["steps"]:
    p = (args.d_in * args.hidden + args.hidden * args.hidden
         + 2 * args.hidden)
    print_table(
        f"Full Adam step: MLP {args.d_in}-{args.hidden}-{args.hidden} ({p:,}"
        f" shared parameters) + K linear heads, batch {args.batch}",
        results["steps"], args.tasks)
  lines = ratio_lines(results["aggregation"], list(
      results["aggregation"]), args.tasks, [
          ("TorchJD FairGrad / fj.fairgrad (aggregation)",
           "TorchJD FairGrad aggregate", "fj.fairgrad aggregate"),
          ("TorchJD UPGrad / fj.upgrad (aggregation)",
           "TorchJD UPGrad aggregate", "fj.upgrad aggregate"),
          ("torch J @ J.T / fj.gram_matrix", "torch J @ J.T",
           "fj.gram_matrix"),
          ("XLA J @ J.T / fj.gram_matrix", "XLA J @ J.T", "fj.gram_matrix"),
      ]) + ratio_lines(results["steps"], list(results["steps"]), args.tasks, [
          ("TorchJD autojac / fj stacked (task_gradients)",
           "TorchJD autojac FairGrad", "fj stacked (task_gradients)"),
          ("TorchJD autojac / fj stacked (jax.jacrev)",
           "TorchJD autojac FairGrad", "fj stacked (jax.jacrev)"),
          ("TorchJD autogram / fj Gram-only (one chunk)",
           "TorchJD autogram FairGrad", "fj Gram-only (one chunk)"),
          ("TorchJD autogram / fj Gram-only (chunk 1)",
           "TorchJD autogram FairGrad", "fj Gram-only (chunk 1)"),
          ("TorchJD autojac / fj lean compile, stacked",
           "TorchJD autojac FairGrad", LEAN + "stacked (task_gradients)"),
          ("TorchJD autogram / fj lean compile, Gram-only (chunk 1)",
           "TorchJD autogram FairGrad", LEAN + "Gram-only (chunk 1)"),
          ("fj stacked / fj lean compile, stacked",
           "fj stacked (task_gradients)", LEAN + "stacked (task_gradients)"),
          ("fj Gram-only (chunk 1) / fj lean compile, Gram-only (chunk 1)",
           "fj Gram-only (chunk 1)", LEAN + "Gram-only (chunk 1)"),
          ("torch LS / fj LS", "torch LS", "fj LS"),
      ])
  if lines:
    print("\nSpeed-ups, ratios of medians in this run (> 1: fairgrad_jax is"
          " faster)\n")
    print("| ratio | " + " | ".join(f"K = {k}" for k in args.tasks) + " |")
    print("|---|" + "---|" * len(args.tasks))
    for line in lines:
      print(line)
  if args.memory:
    results["memory"] = memory_table(args, max(args.tasks), torch is not None)
  print(f"\nload average at the end: {_load()}")
  return results


if __name__ == "__main__":
  main()
