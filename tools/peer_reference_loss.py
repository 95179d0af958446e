"""LibMTL's STCH, IMTL (loss part), GLS and DB-MTL on seeded loss sequences:
the peer reference for the loss-based methods.

Usage (needs a checkout of LibMTL, github.com/median-research-group/LibMTL;
torch is not needed)::

  python tools/peer_reference_loss.py --libmtl PATH/TO/LibMTL \\
      [--out tests/data/peer_loss_methods.json]

LibMTL does not pip-install here (it pins old torch and numpy versions) and
torch is not a dependency of this project, so this script reproduces, in
NumPy float64, what LibMTL's code does: the scalar loss that each
weighting's ``backward`` back-propagates, line by line, with LibMTL's
constants (1e-20, the detached max term, Adam's update). The weights of a
step are the derivatives of that loss with respect to the task losses,
∂L/∂l_i (the update LibMTL applies is Σ_i ∂L/∂l_i g_i), taken by the
complex step, Im L(l + i h e_i) / h with h = 1e-30, exact to float64
round-off and independent of the closed forms in fairgrad_jax. Before
computing anything the script reads LibMTL's files and checks that the
lines it reproduces are there (it stops if they changed), and it records
their git blob hashes in the output.

What is reproduced (LibMTL/weighting/...):

* ``STCH.py``: epochs < ``warmup_epoch``: L = Σ log(l_i + 1e-20);
  epoch == ``warmup_epoch``: the same, and the losses are averaged into the
  nadir vector z; later: L = K μ log Σ exp((u_i − max u)/μ),
  u = log(l/z + 1e-20) (max detached). An epoch here is ``steps_per_epoch``
  calls, so fairgrad_jax's ``warmup_steps = warmup_epoch ·
  steps_per_epoch`` and ``average_steps = steps_per_epoch``.
* ``IMTL.py``, its loss part: L = Σ (e^{s_i} l_i − s_i), s a parameter of
  the model (zeros at the start) that the model's optimizer (torch Adam with
  L2 ``weight_decay``) steps on ∂L/∂s after the update; the loss weights of
  a step are ∂L/∂l_i = e^{s_i}.
* ``GLS.py``: L = (Π l_i)^{1/K}. LibMTL also *returns* (logs) l_i / (K Π l),
  which is not ∂L/∂l_i; the file keeps both (``logged``) so that the tests
  can say so.
* ``DB_MTL.py``: ĝ_i = ∇ log(l_i + 1e-8) = g_i / (l_i + 1e-8); the K×P
  buffer b ← ĝ + β/t^σ (b − ĝ) from zeros; u_i = ‖b_i‖;
  α = max u / (u + 1e-8); update Σ_i α_i b_i. With a fixed K×P Jacobian per
  case (the losses change, the gradients do not: where fairgrad_jax's
  ``db_mtl``, which keeps no gradient buffer, is exact), and with a new
  Jacobian at every step for β = 0 (no buffer: exact too).

Cases: K in {2, 3, 5}; loss sequences of ``STEPS`` steps in three families
(``random``: uniform in [0.1, 3]; ``decreasing``: a per-task scale in
10^[-1, 1] times a decaying trend with noise; ``scaled``: ``random`` times
10^e per task, e uniform in [-3, 3]).
"""

import argparse
import hashlib
import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 14
KS = (2, 3, 5)
FAMILIES = ("random", "decreasing", "scaled")
STEPS = 10
H = 1e-30  # complex step

# Lines of LibMTL's code that the reproductions below follow.
EXPECTED_LINES = {
    "STCH.py": [
        "if self.epoch < warmup_epoch:",
        "loss = torch.mul(torch.log(losses+1e-20), torch.ones_like(losses)"
        ".to(self.device)).sum()",
        "elif self.epoch == warmup_epoch:",
        "self.average_loss += losses.detach()",
        "self.nadir_vector = self.average_loss / self.average_loss_count",
        "losses = torch.log(losses/self.nadir_vector+1e-20)",
        "max_term = torch.max(losses.data).detach()",
        "loss = mu * torch.log(torch.sum(torch.exp(reg_losses/mu))) * "
        "self.task_num",
    ],
    "IMTL.py": [
        "self.loss_scale = nn.Parameter(torch.tensor([0.0]*self.task_num,",
        "losses = self.loss_scale.exp()*losses - self.loss_scale",
    ],
    "DB_MTL.py": [
        "batch_grads = self._compute_grad(torch.log(losses+1e-8), "
        "mode='backward')",
        "self.grad_buffer = batch_grads + (beta/self.step**beta_sigma) * "
        "(self.grad_buffer - batch_grads)",
        "u_grad = self.grad_buffer.norm(dim=-1)",
        "alpha = u_grad.max() / (u_grad + 1e-8)",
        "new_grads = sum([alpha[i] * self.grad_buffer[i] for i in "
        "range(self.task_num)])",
    ],
    "GLS.py": [
        "loss = torch.pow(losses.prod(), 1./self.task_num)",
        "batch_weight = losses / (self.task_num * losses.prod())",
    ],
}


def check_libmtl(libmtl: pathlib.Path) -> dict:
  """Checks LibMTL's files hold the reproduced lines; their blob hashes."""
  hashes = {}
  for name, lines in EXPECTED_LINES.items():
    path = libmtl / "LibMTL" / "weighting" / name
    text = path.read_text()
    squashed = " ".join(text.split())
    for line in lines:
      if " ".join(line.split()) not in squashed:
        raise SystemExit(f"{path} no longer has {line!r}: re-read it and"
                         " update this script.")
    data = path.read_bytes()
    hashes[name] = hashlib.sha1(
        b"blob %d\0" % len(data) + data).hexdigest()
  return hashes


def grad_wrt(fn, x: np.ndarray) -> np.ndarray:
  """∂fn/∂x_i by the complex step (fn analytic in x, real on reals)."""
  out = np.empty_like(x)
  for i in range(x.size):
    z = x.astype(np.complex128)
    z[i] += 1j * H
    out[i] = np.imag(fn(z)) / H
  return out


def losses_sequence(rng: np.random.Generator, k: int, family: str):
  if family == "random":
    return rng.uniform(0.1, 3.0, (STEPS, k))
  if family == "decreasing":
    scale = 10.0 ** rng.uniform(-1.0, 1.0, k)
    trend = np.exp(-0.2 * np.arange(STEPS))[:, None]
    return scale * trend * rng.uniform(0.8, 1.2, (STEPS, k))
  if family == "scaled":
    return rng.uniform(0.1, 3.0, (STEPS, k)) * 10.0 ** rng.uniform(-3, 3, k)
  raise ValueError(f"unknown family {family!r}")


def stch(losses_seq, mu, warmup_epoch, steps_per_epoch):
  """LibMTL's STCH.backward, one call per step; ∂L/∂l per step."""
  k = losses_seq.shape[1]
  average_loss, average_count, nadir = 0.0, 0, None
  weights = []
  for t, losses in enumerate(losses_seq):
    epoch = t // steps_per_epoch
    if epoch <= warmup_epoch:
      def loss_fn(l):
        return np.sum(np.log(l + 1e-20) * np.ones_like(l))
      if epoch == warmup_epoch:
        average_loss = average_loss + losses
        average_count += 1
    else:
      if nadir is None:
        nadir = average_loss / average_count
      max_term = np.max(np.log(losses / nadir + 1e-20))  # detached
      def loss_fn(l, nadir=nadir, max_term=max_term):
        reg = np.log(l / nadir + 1e-20) - max_term
        return mu * np.log(np.sum(np.exp(reg / mu))) * k
    weights.append(grad_wrt(loss_fn, losses))
  return np.array(weights)


def imtl_l(losses_seq, lr, weight_decay):
  """LibMTL's IMTL loss part with torch's Adam (β = (0.9, 0.999), ε = 1e-8,
  L2 weight decay): the loss weights e^s of each step, s after each."""
  k = losses_seq.shape[1]
  s = np.zeros(k)
  m, v = np.zeros(k), np.zeros(k)
  b1, b2, eps = 0.9, 0.999, 1e-8
  weights, scales = [], []
  for t, losses in enumerate(losses_seq, start=1):
    s_now = s.copy()
    weights.append(grad_wrt(
        lambda l, s_now=s_now: np.sum(np.exp(s_now) * l - s_now), losses))
    grad = grad_wrt(lambda x, l=losses: np.sum(np.exp(x) * l - x), s)
    grad = grad + weight_decay * s  # torch.optim.Adam's weight_decay
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps
    s = s - lr / (1 - b1 ** t) * m / denom
    scales.append(s.copy())
  return np.array(weights), np.array(scales)


def gls(losses_seq):
  """LibMTL's GLS: ∂/∂l (Π l)^{1/K} and the batch_weight it returns."""
  k = losses_seq.shape[1]
  weights = np.array([grad_wrt(lambda l: np.prod(l) ** (1.0 / k), losses)
                      for losses in losses_seq])
  logged = losses_seq / (k * np.prod(losses_seq, axis=1, keepdims=True))
  return weights, logged


def db_mtl(losses_seq, grads_seq, beta, beta_sigma):
  """LibMTL's DB_MTL.backward: the update of each step, Σ_i α_i b_i."""
  k, p = grads_seq.shape[1:]
  buffer = np.zeros((k, p))
  updates = []
  for step, (losses, grads) in enumerate(zip(losses_seq, grads_seq), 1):
    # ∂ log(l_i + 1e-8) / ∂l_i by the complex step, times g_i.
    dlog = grad_wrt(lambda l: np.sum(np.log(l + 1e-8)), losses)
    batch = dlog[:, None] * grads
    buffer = batch + (beta / step ** beta_sigma) * (buffer - batch)
    u = np.linalg.norm(buffer, axis=-1)
    alpha = u.max() / (u + 1e-8)
    updates.append(sum(alpha[i] * buffer[i] for i in range(k)))
  return np.array(updates)


DB_P = 6
DB_SETTINGS = [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)]  # (beta, beta_sigma)

STCH_SETTINGS = [  # (mu, warmup_epoch, steps_per_epoch)
    (1.0, 2, 2), (0.5, 1, 3), (4.0, 0, 1)]
IMTL_SETTINGS = [  # (lr, weight_decay): LibMTL's defaults, and a faster lr
    (1e-4, 1e-5), (0.05, 1e-5)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--libmtl", type=pathlib.Path, required=True,
                      help="a checkout of LibMTL (its LibMTL/weighting/ is"
                      " read and checked)")
  parser.add_argument("--out", type=pathlib.Path,
                      default=ROOT / "tests" / "data" /
                      "peer_loss_methods.json")
  args = parser.parse_args()
  hashes = check_libmtl(args.libmtl)
  rng = np.random.default_rng(SEED)
  cases = []
  for k in KS:
    for family in FAMILIES:
      losses = losses_sequence(rng, k, family)
      case = {"k": k, "family": family, "losses": losses.tolist(),
              "stch": [], "imtl_l": []}
      for mu, warmup_epoch, per_epoch in STCH_SETTINGS:
        case["stch"].append({
            "mu": mu, "warmup_epoch": warmup_epoch,
            "steps_per_epoch": per_epoch,
            "weights": stch(losses, mu, warmup_epoch, per_epoch).tolist()})
      for lr, wd in IMTL_SETTINGS:
        w, s = imtl_l(losses, lr, wd)
        case["imtl_l"].append({"lr": lr, "weight_decay": wd,
                               "weights": w.tolist(),
                               "log_scales": s.tolist()})
      w, logged = gls(losses)
      case["gls"] = {"weights": w.tolist(), "logged": logged.tolist()}
      jac = (10.0 ** rng.uniform(-1, 1, (k, 1))
             * rng.standard_normal((k, DB_P)))
      case["db_mtl"] = []
      for beta, beta_sigma in DB_SETTINGS:
        fixed = np.broadcast_to(jac, (STEPS, k, DB_P))
        case["db_mtl"].append({
            "beta": beta, "beta_sigma": beta_sigma, "grads": jac.tolist(),
            "updates": db_mtl(losses, fixed, beta, beta_sigma).tolist()})
      moving = rng.standard_normal((STEPS, k, DB_P))
      case["db_mtl_moving"] = {
          "beta": 0.0, "beta_sigma": 0.0, "grads": moving.tolist(),
          "updates": db_mtl(losses, moving, 0.0, 0.0).tolist()}
      cases.append(case)
  out = {
      "generator": "tools/peer_reference_loss.py",
      "peer": "LibMTL (median-research-group/LibMTL), reproduced in NumPy"
              " float64 from its source; derivatives by the complex step",
      "libmtl_blob_sha1": hashes,
      "seed": SEED,
      "cases": cases,
  }
  args.out.write_text(json.dumps(out) + "\n")
  print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
  main()
