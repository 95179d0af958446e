"""LibMTL's GradNorm, MoCo and ExcessMTL, TorchJD's PBI and COSMOS: the peer
reference for fairgrad_jax's ``gradnorm``, ``moco``, ``excess_mtl``, ``pbi``
and ``cosmos``.

Usage (needs torch and torchjd >= 0.18, and a checkout of LibMTL,
github.com/median-research-group/LibMTL; nothing is imported from torch
until the script runs)::

  python tools/peer_reference_more.py --libmtl PATH/TO/LibMTL \\
      [--out tests/data/peer_more_methods.json]

LibMTL does not pip-install here (it pins old torch and numpy versions), so,
as ``tools/peer_reference_loss.py`` does, this script reproduces its code in
float64, line by line, after checking that LibMTL's files still hold those
lines (it records their git blob hashes):

* ``GradNorm.py``, in torch float64 with torch's autograd and Adam (the
  weighting's ``loss_scale`` is a parameter of the model, stepped by the
  model's optimizer, Adam with L2 ``weight_decay``): epoch 0 the plain sum
  (weights 1; ``loss_scale`` gets no gradient, so Adam skips it); later
  w = K softmax(s), L_grad = Σ |‖w_i g_i‖ − (mean ‖w g‖ r_i^α).detach()|
  back-propagated into s, r_i = L_i / mean L, L_i = l_i / l_i(0), l(0) the
  mean loss of epoch 0 (LibMTL's ``train_loss_buffer[:, 0]``); the update
  Σ w_i g_i with the weights before s's step. An epoch is
  ``steps_per_epoch`` calls (fairgrad_jax's ``warmup_steps``). One fixed
  K×P Jacobian per case (the losses change, the gradients do not).
* ``MoCo.py``, in NumPy float64: ĝ_i = g_i / (‖g_i‖ + 1e-8) l_i,
  y ← y − β/t^σβ (y − ĝ), λ ← softmax(λ − γ/t^σγ (YYᵀ + ρI) λ), update
  Yᵀλ; a new K×P Jacobian at every step.
* ``ExcessMTL.py``, in NumPy float64: S_i += g_i², ε_i = g_i (1/√(S_i +
  1e-7)) g_iᵀ; the first call records ε⁽¹⁾ and keeps w = 1; later
  w ← w exp(η ε/ε⁽¹⁾), renormalised to sum K; the update Σ w_i g_i (LibMTL
  back-propagates Σ w_i l_i); on the same moving Jacobians as MoCo.

TorchJD 0.18 ships PBI and COSMOS as scalarizers; their weights are the
gradients of ``PBI(theta, weights, reference)(l)`` and
``COSMOS(lambda_, weights)(l)`` with respect to the losses l, by torch's
autograd in float64.

Cases: K in {2, 3, 5}; ``STEPS`` steps of losses in two families
(``random``: uniform in [0.1, 3]; ``scaled``: ``random`` times 10^e per
task, e uniform in [-2, 2]) and of Jacobians (``random``: standard normal
rows; ``scaled``: rows times 10^e, e uniform in [-2, 2]).
"""

import argparse
import hashlib
import importlib.metadata
import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 1411
KS = (2, 3, 5)
FAMILIES = ("random", "scaled")
STEPS = 10
P = 6

EXPECTED_LINES = {
    "GradNorm.py": [
        "self.loss_scale = nn.Parameter(torch.tensor([1.0]*self.task_num,"
        " device=self.device))",
        "if self.epoch >= 1:",
        "loss_scale = self.task_num * F.softmax(self.loss_scale, dim=-1)",
        "G_per_loss = torch.norm(loss_scale.unsqueeze(1)*grads, p=2, dim=-1)",
        "G = G_per_loss.mean(0)",
        "L_i = torch.Tensor([losses[tn].item()/self.train_loss_buffer[tn, 0]"
        " for tn in range(self.task_num)]).to(self.device)",
        "r_i = L_i/L_i.mean()",
        "constant_term = (G*(r_i**alpha)).detach()",
        "L_grad = (G_per_loss-constant_term).abs().sum(0)",
        "loss_weight = loss_scale.detach().clone()",
        "self._backward_new_grads(loss_weight, grads=grads)",
        "loss = torch.mul(losses, torch.ones_like(losses).to(self.device))"
        ".sum()",
    ],
    "MoCo.py": [
        "self.y = torch.zeros(self.task_num, self.grad_dim).to(self.device)",
        "self.lambd = (torch.ones([self.task_num, ]) / self.task_num)"
        ".to(self.device)",
        "grads[tn] = grads[tn]/(grads[tn].norm()+1e-8)*losses[tn]",
        "self.y = self.y - (beta/self.step**beta_sigma) * (self.y - grads)",
        "self.lambd = F.softmax(self.lambd - (gamma/self.step**gamma_sigma) *"
        " (self.y@self.y.t()+rho*torch.eye(self.task_num).to(self.device))"
        "@self.lambd, -1)",
        "new_grads = self.y.t()@self.lambd",
    ],
    "ExcessMTL.py": [
        "self.loss_weight = torch.tensor([1.0]*self.task_num,"
        " device=self.device, requires_grad=False)",
        "self.grad_sum[i] += grads[i]**2",
        "h_i = torch.sqrt(self.grad_sum[i] + 1e-7)",
        "w[i] = grad_i * (1 / h_i) @ grad_i.t()",
        "self.initial_w = w",
        "w = w / self.initial_w",
        "self.loss_weight = self.loss_weight * torch.exp(w* robust_step_size)",
        "self.loss_weight = self.loss_weight / self.loss_weight.sum() *"
        " self.task_num",
        "loss = torch.mul(losses, self.loss_weight).sum()",
    ],
}

GRADNORM_SETTINGS = [  # (alpha, lr, weight_decay, steps_per_epoch)
    (1.5, 1e-4, 1e-5, 2), (1.5, 0.05, 0.0, 3), (0.5, 0.05, 1e-5, 1)]
MOCO_SETTINGS = [  # (beta, beta_sigma, gamma, gamma_sigma, rho)
    (0.5, 0.5, 0.1, 0.5, 0.0), (0.9, 0.0, 1.0, 0.0, 0.1)]
EXCESS_SETTINGS = [1e-2, 1.0]  # robust_step_size
PBI_SETTINGS = [(5.0, False), (0.0, False), (2.0, True)]  # (theta, ref?)
COSMOS_SETTINGS = [0.5, 4.0]  # lambda_


def check_libmtl(libmtl: pathlib.Path) -> dict:
  """Checks LibMTL's files hold the reproduced lines; their blob hashes."""
  hashes = {}
  for name, lines in EXPECTED_LINES.items():
    path = libmtl / "LibMTL" / "weighting" / name
    squashed = " ".join(path.read_text().split())
    for line in lines:
      if " ".join(line.split()) not in squashed:
        raise SystemExit(f"{path} no longer has {line!r}: re-read it and"
                         " update this script.")
    data = path.read_bytes()
    hashes[name] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
  return hashes


def losses_sequence(rng, k, family):
  losses = rng.uniform(0.1, 3.0, (STEPS, k))
  if family == "scaled":
    losses = losses * 10.0 ** rng.uniform(-2, 2, k)
  return losses


def jacobian(rng, shape, family):
  jac = rng.standard_normal(shape)
  if family == "scaled":
    jac = jac * 10.0 ** rng.uniform(-2, 2, shape[:-1] + (1,))
  return jac


def gradnorm(torch, losses_seq, jac, alpha, lr, weight_decay,
             steps_per_epoch):
  """LibMTL's GradNorm.backward and the model's Adam step, per call."""
  k = jac.shape[0]
  scale = torch.nn.Parameter(torch.ones(k, dtype=torch.float64))
  opt = torch.optim.Adam([scale], lr=lr, weight_decay=weight_decay)
  grads = torch.tensor(jac)
  first_epoch = losses_seq[:steps_per_epoch].mean(axis=0)
  weights, scales, updates = [], [], []
  for t, losses in enumerate(losses_seq):
    opt.zero_grad(set_to_none=False)
    if t // steps_per_epoch >= 1:
      loss_scale = k * torch.softmax(scale, dim=-1)
      g_per_loss = torch.norm(loss_scale.unsqueeze(1) * grads, p=2, dim=-1)
      g_mean = g_per_loss.mean(0)
      l_i = torch.tensor(losses / first_epoch)
      r_i = l_i / l_i.mean()
      constant = (g_mean * r_i ** alpha).detach()
      (g_per_loss - constant).abs().sum(0).backward()
      w = loss_scale.detach().clone().numpy()
    else:
      w = np.ones(k)
    opt.step()
    weights.append(w)
    scales.append(scale.detach().numpy().copy())
    updates.append(w @ jac)
  return np.array(weights), np.array(scales), np.array(updates)


def moco(losses_seq, grads_seq, beta, beta_sigma, gamma, gamma_sigma, rho):
  """LibMTL's MoCo.backward: λ and the update Yᵀλ per call."""
  k = grads_seq.shape[1]
  y = np.zeros(grads_seq.shape[1:])
  lambd = np.ones(k) / k
  lambdas, updates = [], []
  for step, (losses, grads) in enumerate(zip(losses_seq, grads_seq), 1):
    g = grads / (np.linalg.norm(grads, axis=1, keepdims=True) + 1e-8)
    g = g * losses[:, None]
    y = y - (beta / step ** beta_sigma) * (y - g)
    z = lambd - (gamma / step ** gamma_sigma) * (y @ y.T + rho * np.eye(k)
                                                ) @ lambd
    lambd = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    lambdas.append(lambd)
    updates.append(y.T @ lambd)
  return np.array(lambdas), np.array(updates)


def excess_mtl(grads_seq, robust_step_size):
  """LibMTL's ExcessMTL.backward: the loss weights and the update
  Σ_i w_i g_i per call."""
  k = grads_seq.shape[1]
  loss_weight = np.ones(k)
  grad_sum = np.zeros(grads_seq.shape[1:])
  initial_w = None
  weights, updates = [], []
  for grads in grads_seq:
    w = np.zeros(k)
    for i in range(k):
      grad_sum[i] += grads[i] ** 2
      h_i = np.sqrt(grad_sum[i] + 1e-7)
      w[i] = grads[i] * (1 / h_i) @ grads[i]
    if initial_w is None:
      initial_w = w
    else:
      w = w / initial_w
      loss_weight = loss_weight * np.exp(w * robust_step_size)
      loss_weight = loss_weight / loss_weight.sum() * k
    weights.append(loss_weight)
    updates.append(loss_weight @ grads)
  return np.array(weights), np.array(updates)


def scalarizer_weights(torch, scalarizer, losses):
  values = torch.tensor(losses, requires_grad=True)
  scalarizer(values).backward()
  return values.grad.numpy().copy()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--libmtl", type=pathlib.Path, required=True,
                      help="a checkout of LibMTL (its LibMTL/weighting/ is"
                      " read and checked)")
  parser.add_argument("--out", type=pathlib.Path,
                      default=ROOT / "tests" / "data" /
                      "peer_more_methods.json")
  args = parser.parse_args()
  hashes = check_libmtl(args.libmtl)

  import torch  # pylint: disable=import-outside-toplevel
  from torchjd import scalarization  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(SEED)
  cases = []
  for k in KS:
    for family in FAMILIES:
      losses = losses_sequence(rng, k, family)
      jac = jacobian(rng, (k, P), family)
      moving = jacobian(rng, (STEPS, k, P), family)
      case = {"k": k, "family": family, "losses": losses.tolist(),
              "jacobian": jac.tolist(), "moving_jacobians": moving.tolist(),
              "gradnorm": [], "moco": [], "pbi": [], "cosmos": []}
      for alpha, lr, wd, per_epoch in GRADNORM_SETTINGS:
        w, s, d = gradnorm(torch, losses, jac, alpha, lr, wd, per_epoch)
        case["gradnorm"].append({
            "alpha": alpha, "lr": lr, "weight_decay": wd,
            "steps_per_epoch": per_epoch, "weights": w.tolist(),
            "loss_scale": s.tolist(), "updates": d.tolist()})
      for beta, beta_sigma, gamma, gamma_sigma, rho in MOCO_SETTINGS:
        lambdas, d = moco(losses, moving, beta, beta_sigma, gamma,
                          gamma_sigma, rho)
        case["moco"].append({
            "beta": beta, "beta_sigma": beta_sigma, "gamma": gamma,
            "gamma_sigma": gamma_sigma, "rho": rho,
            "lambdas": lambdas.tolist(), "updates": d.tolist()})
      case["excess_mtl"] = []
      for step_size in EXCESS_SETTINGS:
        w, d = excess_mtl(moving, step_size)
        case["excess_mtl"].append({"robust_step_size": step_size,
                                   "weights": w.tolist(),
                                   "updates": d.tolist()})
      pref = rng.uniform(0.1, 1.0, k)
      reference = -rng.uniform(0.0, 0.5, k) * losses.min(axis=0)
      for theta, with_reference in PBI_SETTINGS:
        ref = reference if with_reference else None
        pbi = scalarization.PBI(
            theta, torch.tensor(pref),
            None if ref is None else torch.tensor(ref))
        case["pbi"].append({
            "theta": theta, "pref_vector": pref.tolist(),
            "reference": None if ref is None else ref.tolist(),
            "weights": [scalarizer_weights(torch, pbi, l).tolist()
                        for l in losses]})
      for lambda_ in COSMOS_SETTINGS:
        cosmos = scalarization.COSMOS(lambda_, torch.tensor(pref))
        case["cosmos"].append({
            "lambda_": lambda_, "pref_vector": pref.tolist(),
            "weights": [scalarizer_weights(torch, cosmos, l).tolist()
                        for l in losses]})
      cases.append(case)
  versions = {name: importlib.metadata.version(name)
              for name in ("torchjd", "torch")}
  out = {
      "generator": "tools/peer_reference_more.py",
      "peer": "LibMTL (GradNorm: torch float64; MoCo, ExcessMTL: NumPy"
              " float64),"
              " reproduced from its source; TorchJD's PBI and COSMOS"
              " scalarizers differentiated by torch's autograd (float64)",
      "libmtl_blob_sha1": hashes,
      "versions": versions,
      "seed": SEED,
      "cases": cases,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(out) + "\n")
  print(f"wrote {len(cases)} cases to {args.out} ({versions})")


if __name__ == "__main__":
  main()
