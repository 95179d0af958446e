"""One run of a paper benchmark: train, evaluate every epoch, checkpoint.

One training step (one ``jax.jit``-ed call) is

1. the K task losses of the minibatch and their gradients, stacked on a
   leading task axis (one forward pass and K backward passes of its VJP,
   vmapped as ``jax.jacrev`` does, or one after the other for QM9; batch
   norm in training mode, its new statistics taken from the forward pass);
2. ``optax.chain(aggregator, [clip of the shared update], adam)``: the
   method's aggregator (``losses=`` passed along for the loss-based methods),
   the global-norm clip of the shared parameters' update where the authors'
   code clips, and Adam with an injected learning rate that the host sets
   every epoch from the protocol's schedule.

After every epoch the protocol's splits are evaluated, the reported epoch is
selected as the authors' code selects it, one line goes to ``log.jsonl`` and
a checkpoint to ``checkpoints/`` (see :mod:`benchmarks.paper.checkpoint`).
"""

import dataclasses
import inspect
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fairgrad_jax as fj
from benchmarks.paper import checkpoint
from benchmarks.paper import problems
from benchmarks.paper import protocols
from fairgrad_jax import _task_gradients  # the backend's default batch
from fairgrad_jax import metrics


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What one command line asks for (see ``python -m benchmarks.paper -h``)."""

  benchmark: str
  data: str | None
  method: str
  out: str
  alpha: float = protocols.DEFAULT_ALPHA
  seed: int = 0
  epochs: int | None = None
  batch_size: int | None = None
  model_scale: int = 1
  main_task: int = 0
  qm9_split: tuple[int, int] | None = None
  resume: bool = False
  progress: bool | None = None

  def protocol(self) -> protocols.Protocol:
    p = protocols.PROTOCOLS[self.benchmark]
    changes = {}
    if self.epochs is not None:
      changes["epochs"] = self.epochs
    if self.batch_size is not None:
      changes["batch_size"] = changes["eval_batch_size"] = self.batch_size
    if self.qm9_split is not None:
      changes["num_val"], changes["num_test"] = self.qm9_split
    return dataclasses.replace(p, **changes)


# ----------------------------------------------------------------------------
# Optimiser


def single_task(task: int) -> optax.GradientTransformationExtraArgs:
  """The authors' 'stl': the gradient of task ``task``'s loss alone."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(grads, state, params=None, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda g: g[task], grads), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def build_aggregator(spec: protocols.MethodSpec, *, alpha: float,
                     num_tasks: int, shared, seed: int, main_task: int):
  """The method's aggregator with the authors' hyperparameters."""
  if spec.factory is None:
    return single_task(main_task)
  if spec.registry is not None:
    return spec.registry.build(num_tasks, shared, seed)
  factory = getattr(fj, spec.factory)
  kwargs = dict(spec.kwargs)
  if spec.factory == "fairgrad":
    kwargs["alpha"] = float(alpha)
  accepted = inspect.signature(factory).parameters
  for key, value in (("num_tasks", num_tasks), ("shared", shared),
                     ("seed", seed)):
    if key in accepted:
      kwargs[key] = value
  return factory(**kwargs)


def build_optimizer(spec, *, alpha, num_tasks, shared, seed, main_task,
                    learning_rate):
  parts = [build_aggregator(spec, alpha=alpha, num_tasks=num_tasks,
                            shared=shared, seed=seed, main_task=main_task)]
  if spec.clip is not None:
    # clip_grad_norm_(shared_parameters, max_norm) after the aggregation.
    parts.append(optax.masked(optax.clip_by_global_norm(spec.clip), shared))
  parts.append(optax.inject_hyperparams(optax.adam)(
      learning_rate=learning_rate))
  return optax.chain(*parts)


def set_learning_rate(opt_state, learning_rate: float):
  """``opt_state`` with Adam's injected learning rate replaced."""
  adam = opt_state[-1]
  hyperparams = dict(adam.hyperparams)
  hyperparams["learning_rate"] = jnp.asarray(
      learning_rate, hyperparams["learning_rate"].dtype)
  return opt_state[:-1] + (adam._replace(hyperparams=hyperparams),)


def task_batch_size(protocol: protocols.Protocol) -> int:
  """Tasks per vmapped backward pass: the backend's choice, capped."""
  size = _task_gradients.default_batch_size(protocol.num_tasks)
  if protocol.max_task_batch is not None:
    size = min(size, protocol.max_task_batch)
  return size


def task_gradients(problem: problems.Problem, params, batch_stats, batch):
  """(K,) losses, per-task gradients stacked on axis 0, new batch stats.

  One forward pass and K backward passes of its VJP
  (:func:`fairgrad_jax.task_gradients`): all K vmapped on GPU/TPU (what
  ``jax.jacrev`` does), one at a time on a CPU, and never more than the
  protocol's ``max_task_batch`` at once (QM9's edge network needs ~5 GB of
  cotangents per task at batch 120, CelebA's CNN ~0.5 GB per task at batch
  256).
  """
  fn = fj.task_gradients(
      lambda p: problem.losses(p, batch_stats, batch, train=True),
      batch_size=task_batch_size(problem.protocol), has_aux=True)
  (losses, new_stats), grads = fn(params)
  return losses, grads, new_stats


def make_step(problem: problems.Problem, opt):
  """The jitted training step (stacked per-task gradients)."""

  @jax.jit
  def step(params, batch_stats, opt_state, batch):
    losses, grads, new_stats = task_gradients(problem, params, batch_stats,
                                              batch)
    updates, opt_state = opt.update(grads, opt_state, params, losses=losses)
    return optax.apply_updates(params, updates), new_stats, opt_state, losses

  return step


def make_predict(problem: problems.Problem):

  @jax.jit
  def predict(params, batch_stats, batch):
    variables = {"params": params}
    if problem.has_batch_stats:
      variables["batch_stats"] = batch_stats
    return problem.apply(variables, batch, train=False)[0]

  return predict


def init_variables(problem: problems.Problem, key, batch):
  inputs = batch["image"] if isinstance(batch, dict) else batch
  variables = jax.jit(problem.model.init)(key, inputs)
  return variables["params"], variables.get("batch_stats")


@dataclasses.dataclass(frozen=True)
class Functions:
  """The compiled functions of one (benchmark, model, method) setting."""

  init: Any
  opt: Any
  step: Any
  predict: Any


# Runs in one process with the same setting (a resumed run, tests) share
# their compiled functions: XLA compilation dominates short runs. The traced
# functions read only the problem's model and protocol, never its data.
_MODEL_FUNCTIONS: dict[tuple, tuple] = {}
_STEPS: dict[tuple, tuple] = {}


def functions(problem: problems.Problem, spec: protocols.MethodSpec, *,
              alpha: float, seed: int, main_task: int, model_scale: int,
              shared) -> Functions:
  model_key = (problem.protocol.name, model_scale)
  if model_key not in _MODEL_FUNCTIONS:
    _MODEL_FUNCTIONS[model_key] = (jax.jit(problem.model.init),
                                   make_predict(problem))
  init, predict = _MODEL_FUNCTIONS[model_key]
  key = model_key + (spec.name, float(alpha), seed, main_task)
  if key not in _STEPS:
    opt = build_optimizer(spec, alpha=alpha,
                          num_tasks=problem.protocol.num_tasks, shared=shared,
                          seed=seed, main_task=main_task,
                          learning_rate=problem.protocol.learning_rate)
    _STEPS[key] = (opt, make_step(problem, opt))
  opt, step = _STEPS[key]
  return Functions(init=init, opt=opt, step=step, predict=predict)


# ----------------------------------------------------------------------------
# Learning-rate schedule and model selection, on the host (JSON state).


def learning_rate_at(protocol, epoch: int, host: dict) -> float:
  if protocol.schedule == "step":
    # torch StepLR stepped after every epoch.
    return protocol.learning_rate * protocol.step_gamma ** (
        epoch // protocol.step_size)
  if protocol.schedule == "plateau":
    return host["plateau"]["lr"]
  return protocol.learning_rate


def plateau_step(protocol, state: dict, value: float) -> dict:
  """torch's ReduceLROnPlateau(mode='min', threshold_mode='rel').step."""
  state = dict(state)
  if value < state["best"] * (1.0 - protocol.plateau_threshold):
    state["best"], state["bad_epochs"] = value, 0
  else:
    state["bad_epochs"] += 1
  if state["bad_epochs"] > protocol.plateau_patience:
    new = max(state["lr"] * protocol.plateau_factor, protocol.plateau_min_lr)
    if state["lr"] - new > 1e-8:
      state["lr"] = new
    state["bad_epochs"] = 0
  return state


def selection_score(protocol, spec, main_task, val: np.ndarray) -> float:
  """The validation number the authors' code selects the epoch with."""
  if spec.factory is None:  # 'stl': the main task's own validation metric
    return float(val[list(protocol.metric_tasks).index(main_task)])
  if protocol.selection == "val_mean":
    return float(np.mean(val))
  return float(metrics.delta_m(val, protocol.stl, protocol.higher_is_better))


def better(protocol, score: float, best: float | None) -> bool:
  if best is None:
    return True
  if protocol.selection == "val_mean":
    return score > best  # celeba: `if val_f1.mean() > best_val_f1`
  return score <= best  # qm9: `best_val_criteria = val_delta <= best_val_delta`


def reported_metrics(protocol, history: list[dict]) -> tuple[list, Any]:
  """The reported test metrics and which epoch(s) they come from."""
  if protocol.selection == "last":
    last = history[-protocol.average_last:]
    values = np.nanmean([h["test"] for h in last], axis=0)
    return values.tolist(), [h["epoch"] for h in last]
  return None, None  # selected epochs are tracked while training


# ----------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool | None):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, unit="step", file=sys.stderr,
              disable=None if enabled is None else not enabled,
              dynamic_ncols=True, leave=False)


def _jsonable(x):
  return [float(v) for v in np.asarray(x, np.float64).reshape(-1)]


def run(config: RunConfig) -> dict:
  """Trains (or resumes) one run; returns the summary written to results.json."""
  protocol = config.protocol()
  spec = protocols.find_method(config.method)
  problem = problems.make_problem(protocol, config.data,
                                  model_scale=config.model_scale,
                                  seed=config.seed)
  os.makedirs(config.out, exist_ok=True)
  ckpt = checkpoint.Checkpointer(os.path.join(config.out, "checkpoints"))
  done = ckpt.latest_epoch()
  if done is not None and not config.resume:
    raise SystemExit(f"{config.out} already holds a checkpoint (epoch {done});"
                     " pass --resume to continue it or choose another --out.")

  key = jax.random.key(config.seed)
  key, init_key = jax.random.split(key)
  example = problem.example_batch()
  params_shape = jax.eval_shape(
      problem.model.init, init_key,
      example["image"] if isinstance(example, dict) else example)["params"]
  fns = functions(problem, spec, alpha=config.alpha, seed=config.seed,
                  main_task=config.main_task, model_scale=config.model_scale,
                  shared=problem.shared_mask(params_shape))
  variables = fns.init(init_key, example["image"] if isinstance(example, dict)
                       else example)
  params, batch_stats = variables["params"], variables.get("batch_stats")
  state = {"params": params, "batch_stats": batch_stats,
           "opt_state": fns.opt.init(params), "key": key}
  host = {"epochs_done": 0, "batches_done": 0, "history": [],
          "best": None,
          "plateau": {"lr": protocol.learning_rate, "best": math.inf,
                      "bad_epochs": 0}}
  if done is not None:
    state, host = ckpt.restore(done, state)

  log_path = os.path.join(config.out, "log.jsonl")
  # The log is rewritten from the checkpoint's history: lines of an epoch
  # that was cut off before its checkpoint are dropped.
  with open(log_path, "w") as f:
    for line in host["history"]:
      f.write(json.dumps(line) + "\n")

  step, predict = fns.step, fns.predict
  for epoch in range(host["epochs_done"], protocol.epochs):
    start = time.perf_counter()
    lr = learning_rate_at(protocol, epoch, host)
    opt_state = set_learning_rate(state["opt_state"], lr)
    params, batch_stats = state["params"], state["batch_stats"]
    key, data_key = jax.random.split(state["key"])
    data_seed = int(jax.random.bits(data_key, (), jnp.uint32))
    bar = _progress(problem.num_train_batches(),
                    f"{protocol.title} {spec.name} epoch {epoch + 1}/"
                    f"{protocol.epochs}", config.progress)
    losses_sum, num_batches = 0.0, 0
    for batch in problem.train_batches(data_seed, epoch):
      params, batch_stats, opt_state, losses = step(
          params, batch_stats, opt_state, batch)
      losses_sum = losses_sum + losses
      num_batches += 1
      bar.update(1)
    bar.close()
    state = {"params": params, "batch_stats": batch_stats,
             "opt_state": opt_state, "key": key}
    train_seconds = time.perf_counter() - start

    evaluate = lambda b: predict(params, batch_stats, b)
    scores = {split: problem.evaluate(evaluate, split)
              for split in problem.eval_splits}
    line = {"epoch": epoch + 1, "lr": lr,
            "train_loss": _jsonable(np.asarray(losses_sum) / num_batches),
            "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / num_batches}
    for split, values in scores.items():
      line[split] = _jsonable(values)
    if protocol.stl is not None:
      line["test_delta_m"] = float(metrics.delta_m(
          scores["test"], protocol.stl, protocol.higher_is_better))
    if "val" in scores:
      score = selection_score(protocol, spec, config.main_task, scores["val"])
      line["val_score"] = score
      best = host["best"]
      if better(protocol, score, None if best is None else best["score"]):
        host["best"] = {"epoch": epoch + 1, "score": score,
                        "test": line["test"]}
      if protocol.schedule == "plateau":
        host["plateau"] = plateau_step(protocol, host["plateau"], score)
    line["seconds"] = time.perf_counter() - start
    host["history"].append(line)
    host["epochs_done"] = epoch + 1
    host["batches_done"] = 0  # checkpoints are taken at epoch boundaries
    with open(log_path, "a") as f:
      f.write(json.dumps(line) + "\n")
    ckpt.save(epoch + 1, state, host)
    if config.progress is not False:
      print(_epoch_summary(protocol, line), file=sys.stderr)
  ckpt.close()

  if protocol.selection == "last":
    reported, epochs = reported_metrics(protocol, host["history"])
  else:
    reported, epochs = host["best"]["test"], [host["best"]["epoch"]]
  return {
      "benchmark": protocol.name, "method": spec.name,
      "alpha": config.alpha if spec.factory == "fairgrad" else None,
      "main_task": config.main_task if spec.factory is None else None,
      "seed": config.seed, "epochs": protocol.epochs,
      "selection": protocol.selection, "reported_epochs": epochs,
      "metric_names": list(protocol.metric_names),
      "higher_is_better": list(protocol.higher_is_better),
      "metrics": reported,
      "seconds_per_step": float(np.median(
          [h["seconds_per_step"] for h in host["history"]])),
      "seconds_per_epoch": float(np.median(
          [h["seconds"] for h in host["history"]])),
  }


def _epoch_summary(protocol, line: dict) -> str:
  loss = " ".join(f"{v:.4g}" for v in line["train_loss"][:11])
  text = (f"[{protocol.title}] epoch {line['epoch']}: lr {line['lr']:.3g},"
          f" train loss {loss}, {line['seconds']:.1f}s")
  if "test_delta_m" in line:
    text += f", test Δm% {line['test_delta_m']:+.2f}"
  if "val_score" in line:
    text += f", val score {line['val_score']:.4g}"
  return text


def load_state(out: str) -> tuple[dict, dict]:
  """The latest checkpoint of the run in ``out``, as plain nested dicts of
  arrays, and its host state (for tests and analysis)."""
  ckpt = checkpoint.Checkpointer(os.path.join(out, "checkpoints"))
  try:
    return ckpt.restore_raw(ckpt.latest_epoch())
  finally:
    ckpt.close()
