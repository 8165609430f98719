"""Noise schedules of the DxMI policies, as pure numpy compile-time constants.

Everything here reproduces the official PyTorch code number for number
(reference §3a, §3b, golden README B).  Arrays are float32 (as torch holds
them) unless noted; the few quantities that the official code computes with
numpy-1 float64 promotion are computed in float64.  Index conventions:

* ``*_data_side_first`` arrays (VAR eta, Gamma_bar) are indexed j = 0..T-1 with
  j = 0 next to the data, as the official code stores them;
* every other per-step array is in **sampling order**: index t is the
  transition x_t -> x_{t+1}, t = 0 starts from noise (reference §8 item 1).

Schedules are cached (``functools.lru_cache``) and their arrays are read-only.

Public names: ``BETA_START``, ``BETA_END``, ``NUM_DIFFUSION_STEPS``,
``LAST_TAU_OFFICIAL``, ``torch_linspace_f32``, ``DDPMSchedule``,
``ddpm_schedule``, ``var_user_defined_eta``, ``stirling_log_alpha_bar``,
``var_continuous_steps``, ``VARSchedule``, ``var_schedule``,
``DDPMAncestralSchedule``, ``ddpm_ancestral_schedule``, ``karras_sigmas``,
``KarrasSchedule``, ``karras_schedule``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np

f32 = np.float32

#: The base DDPM schedule every VAR schedule is fitted to (official
#: ``var_sampler.diffusion_config``; not configurable in the official code).
BETA_START = 1e-4
BETA_END = 0.02
NUM_DIFFUSION_STEPS = 1000

#: Continuous network time of the last VAR sampling step, as the official code
#: computes it (numpy 1.26.4, x86-64 with AVX512F; golden ``continuous_steps[-1]``).
#:
#: It is the root of log abar(tau) = log(1 - beta_0) and so the same for every T
#: (Gamma_bar[0] = 1 - eta_0 = 1 - beta_0 whatever T is).  The root is
#: ill-conditioned: the Stirling formula loses ~1e-10 to cancellation
#: (two ~5e5 terms), while the bisection window is 1e-12 wide and
#: |d log abar / d tau| ~ 1e-4, so 1-ulp differences in float64 ``log`` move
#: the root by ~1e-7.  numpy 1.26's AVX512F float64 ``log`` (not correctly
#: rounded) gives 1.5088348343794689e-4; the official code on a CPU without
#: AVX512F (checked with ``NPY_DISABLE_CPU_FEATURES``), numpy 2 or the correctly
#: rounded libm ``log`` used by :func:`var_continuous_steps` give
#: 1.5069617633345356e-4 (relative difference 1.2e-3, an absolute 1.9e-7 on the
#: network's time input).  ``var_schedule(pin_last_tau=True)`` (default) uses
#: this official value so that the network sees exactly the official input.
LAST_TAU_OFFICIAL = 1.5088348343794689e-04


def _readonly(a: np.ndarray) -> np.ndarray:
  a = np.array(a)
  a.setflags(write=False)
  return a


def _freeze(obj):
  """Makes every ndarray field of a frozen dataclass read-only."""
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    if isinstance(v, np.ndarray):
      object.__setattr__(obj, f.name, _readonly(v))
  return obj


def torch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
  """``torch.linspace(start, end, num)`` in float32, bit for bit (CPU kernel).

  torch takes a float32 step (end - start) / (num - 1), fills the first half as
  start + step * i and the second half as end - step * (num - 1 - i), each
  rounded once to float32.
  """
  num = int(num)
  if num < 1:
    raise ValueError(f"linspace needs num >= 1, got {num}")
  if num == 1:
    return np.array([start], f32)
  s, e = f32(start), f32(end)
  step = np.float64(f32((e - s) / f32(num - 1)))
  i = np.arange(num, dtype=np.float64)
  out = np.where(i < num // 2, np.float64(s) + step * i, np.float64(e) - step * (num - 1 - i))
  return out.astype(f32)


# ------------------------------------------------------------------------------------ DDPM
@dataclasses.dataclass(frozen=True)
class DDPMSchedule:
  """The base linear-beta DDPM schedule (official ``calc_diffusion_hyperparams``).

  Indexed by the diffusion step k = 0..K-1 (k = 0 next to the data), float32.
  ``beta_tilde[k] = beta[k] (1 - abar[k-1]) / (1 - abar[k])`` for k >= 1 and
  ``beta_tilde[0] = beta[0]`` (the official code leaves entry 0 unscaled);
  ``sigma = sqrt(beta_tilde)``.
  """

  beta: np.ndarray
  alpha: np.ndarray
  alpha_bar: np.ndarray
  beta_tilde: np.ndarray
  sigma: np.ndarray


@functools.lru_cache(maxsize=None)
def ddpm_schedule(
  num_steps: int = NUM_DIFFUSION_STEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> DDPMSchedule:
  """beta = linspace(beta_start, beta_end, K) and its products, as torch computes them (float32)."""
  beta = torch_linspace_f32(beta_start, beta_end, num_steps)
  alpha = f32(1) - beta
  alpha_bar = np.cumprod(alpha, dtype=f32)  # sequential float32 product, like the torch loop
  beta_tilde = beta.copy()
  beta_tilde[1:] = beta[1:] * ((f32(1) - alpha_bar[:-1]) / (f32(1) - alpha_bar[1:]))
  return _freeze(DDPMSchedule(beta, alpha, alpha_bar, beta_tilde, np.sqrt(beta_tilde)))


# ------------------------------------------------------------------------------------- VAR
def _bisect(f: Callable[[float], float], lo: float, hi: float, target: float, rel_tol: float) -> float:
  """The official ``bisearch``: f is assumed decreasing on (lo, hi).

  At most 1000 midpoints; stops at the first midpoint with
  target <= f(x) <= (1 + sign(target) rel_tol) target and returns the last
  midpoint either way (so an unreachable target returns ~ the interval end).
  """
  sign = -1.0 if target < 0 else 1.0
  x = lo
  for _ in range(1000):
    x = (lo + hi) / 2
    v = f(x)
    if v < target:
      hi = x
    elif v > (1 + sign * rel_tol) * target:
      lo = x
    else:
      break
  return x


def _quadratic_eta(num_steps: int, x: float) -> np.ndarray:
  return BETA_START * (1.0 + np.arange(num_steps, dtype=np.float64) * x) ** 2


def _var_eta_and_x(num_steps: int):
  """(eta, x, hi): the quadratic eta_j = beta_0 (1 + j x)^2 fitted by bisection."""
  target = np.prod(1.0 - np.linspace(BETA_START, BETA_END, NUM_DIFFUSION_STEPS))
  hi = 0.95 / np.sqrt(BETA_START) / num_steps
  x = _bisect(lambda v: float(np.prod(1.0 - _quadratic_eta(num_steps, v))), 0.0, float(hi), float(target), 1e-4)
  return _quadratic_eta(num_steps, x), x, float(hi)


def var_user_defined_eta(num_steps: int) -> np.ndarray:
  """Official ``get_VAR_noise(T, "quadratic")``: float64 (T,), **data side first**.

  eta_j = beta_0 (1 + j x)^2 with x bisected in (0, 0.95 / sqrt(beta_0) / T) so
  that prod_j (1 - eta_j) reaches abar_999 of the 1000-step DDPM (relative
  tolerance 1e-4).  For small T (e.g. 4, 5, 10) the target is out of reach and
  x converges to the interval's upper end.
  """
  num_steps = _check_steps(num_steps)
  return _readonly(_var_eta_and_x(num_steps)[0])


def _stirling_log_gamma(z: float) -> float:
  """Official ``_log_gamma``: Stirling's log Gamma(z) with the 1/(12 y) correction."""
  y = z - 1.0
  return math.log(2 * math.pi * y) / 2 + y * (math.log(y) - 1) + math.log(1 + 1 / (12 * y))


def _log_alpha_bar_fn(beta_start=BETA_START, beta_end=BETA_END, num_steps=NUM_DIFFUSION_STEPS):
  """tau -> continuous log abar(tau) of the linear-beta DDPM (official ``_log_cont_noise``).

  The official code passes float32 betas and, under numpy 1, promotes
  everything after (beta_T - beta_0) to float64: delta is the float32
  difference divided in float64.
  """
  b0 = float(f32(beta_start))
  delta = float(f32(f32(beta_end) - f32(beta_start))) / (num_steps - 1)
  c = (1.0 - b0) / delta
  log_delta = math.log(delta)
  lg_c1 = _stirling_log_gamma(c + 1)

  def f(tau: float) -> float:
    t1 = tau + 1
    return t1 * log_delta + lg_c1 - _stirling_log_gamma(c - t1 + 1)

  return f


def stirling_log_alpha_bar(tau) -> np.ndarray:
  """log abar(tau) ~ (tau+1) log delta + LG(c+1) - LG(c-tau) for the base DDPM (float64).

  delta = (beta_T - beta_0)/999 and c = (1 - beta_0)/delta (reference §3a).
  """
  f = _log_alpha_bar_fn()
  return np.vectorize(f, otypes=[np.float64])(np.asarray(tau, np.float64))


def var_continuous_steps(gamma_bar, *, pin_last_tau: bool = True) -> np.ndarray:
  """Continuous DDPM times tau (float32, **sampling order**) of a data-side-first Gamma_bar.

  For each k = T-1..0 (sampling order) the integer interval i with
  abar_i >= Gamma_bar_k > abar_{i+1} is found and log abar(tau) = log Gamma_bar_k
  is bisected in (i - 0.01, i + 1.01) (relative tolerance 1e-8); without an
  interval tau = 999 (official ``_precompute_VAR_steps``).  The target is the
  float32 log of the float32 Gamma_bar, as in the official code.

  ``pin_last_tau``: use :data:`LAST_TAU_OFFICIAL` for Gamma_bar_k = 1 - beta_0
  (always the last sampling step), see its comment.
  """
  gamma_bar = np.asarray(gamma_bar, f32)
  alpha_bar = ddpm_schedule().alpha_bar
  f = _log_alpha_bar_fn()
  first_step = f32(f32(1) - f32(BETA_START))
  taus = []
  for k in range(len(gamma_bar) - 1, -1, -1):
    g = gamma_bar[k]
    if pin_last_tau and g == first_step:
      taus.append(LAST_TAU_OFFICIAL)
      continue
    hits = np.nonzero((alpha_bar[:-1] >= g) & (g > alpha_bar[1:]))[0]
    if hits.size == 0:
      taus.append(float(NUM_DIFFUSION_STEPS - 1))
      continue
    i = int(hits[0])
    target = float(np.log(f32(g)))  # float32 log, as np.log of the float32 torch value
    taus.append(_bisect(f, i - 0.01, i + 1.01, target, 1e-8))
  return np.asarray(taus, np.float64).astype(f32)


@dataclasses.dataclass(frozen=True)
class VARSchedule:
  """The T-step VAR schedule (official ``VARSampler`` buffers).  Sampling order unless noted.

  num_steps:            T.
  eta:                  float64 (T,), data side first (``user_defined_eta``).
  eta_x, eta_x_max:     the bisected x of eta_j = beta_0 (1 + j x)^2 and the
                        bisection interval's upper end.
  target_reached:       True iff prod(1 - eta) is within [1, 1 + 1e-4] x abar_999
                        (float64); False means x sits at the interval bound.
  gamma_bar:            float32 (T,), data side first, cumprod(1 - eta).
  tau:                  float32 (T,), continuous network times (decreasing).
  x_mult, eps_mult:     a_t, b_t of the ancestral (DDIM eta=1) mean a_t x + b_t eps.
  sigma:                float32 (T,), schedule noise std inside b_t (last = 0).
  std:                  float32 (T,), the official ``std`` buffer (last = 0.001).
  log_sigma_init:       log(std), the official ``log_betas`` initial value.
  velocity_scale_init:  float32 (T,), eta in sampling order: s_t = eta[T-1-t].
  ddim_x_mult, ddim_eps_mult: deterministic DDIM (eta = 0) coefficients on the
                        same Gamma_bar / tau: b_t = sqrt(1 - abar_next) - sqrt(1 - abar_cur) a_t.
  """

  num_steps: int
  eta: np.ndarray
  eta_x: float
  eta_x_max: float
  target_reached: bool
  gamma_bar: np.ndarray
  tau: np.ndarray
  x_mult: np.ndarray
  eps_mult: np.ndarray
  sigma: np.ndarray
  std: np.ndarray
  log_sigma_init: np.ndarray
  velocity_scale_init: np.ndarray
  ddim_x_mult: np.ndarray
  ddim_eps_mult: np.ndarray


def _check_steps(num_steps) -> int:
  if isinstance(num_steps, bool) or int(num_steps) != num_steps or int(num_steps) < 1:
    raise ValueError(f"the number of sampling steps T must be an integer >= 1, got {num_steps!r}")
  return int(num_steps)


def _var_coefficients(gamma_bar: np.ndarray, kappa: float):
  """(a, b, sigma) of ``VAR_get_params`` in float32 (kappa = 1: ancestral, 0: DDIM).

  Step t uses abar_cur = Gamma_bar[T-1-t] and abar_next = Gamma_bar[T-2-t]
  (1 at the last step, whose sigma is 0).
  """
  num = len(gamma_bar)
  cur = gamma_bar[::-1].astype(f32)
  nxt = np.concatenate([gamma_bar[::-1][1:], [f32(1)]]).astype(f32)
  sigma = f32(kappa) * np.sqrt((f32(1) - nxt) / (f32(1) - cur) * (f32(1) - cur / nxt))
  sigma[num - 1] = 0
  a = np.sqrt(nxt / cur)
  b = np.sqrt(f32(1) - nxt - sigma**2) - np.sqrt(f32(1) - cur) * np.sqrt(nxt / cur)
  return a.astype(f32), b.astype(f32), sigma.astype(f32)


@functools.lru_cache(maxsize=None)
def var_schedule(num_steps: int, *, pin_last_tau: bool = True) -> VARSchedule:
  """The official ``VARSampler(n_timesteps=T)`` schedule for any T >= 1 (kappa = 1)."""
  num_steps = _check_steps(num_steps)
  eta, x, hi = _var_eta_and_x(num_steps)
  target = np.prod(1.0 - np.linspace(BETA_START, BETA_END, NUM_DIFFUSION_STEPS))
  prod = np.prod(1.0 - eta)
  reached = bool(target <= prod <= (1 + 1e-4) * target)
  gamma_bar = np.cumprod(f32(1) - eta.astype(f32), dtype=f32)
  tau = var_continuous_steps(gamma_bar, pin_last_tau=pin_last_tau)
  a, b, sigma = _var_coefficients(gamma_bar, 1.0)
  ddim_a, ddim_b, _ = _var_coefficients(gamma_bar, 0.0)
  std = sigma.copy()
  std[-1] = f32(0.001)
  return _freeze(
    VARSchedule(
      num_steps=num_steps,
      eta=eta,
      eta_x=float(x),
      eta_x_max=hi,
      target_reached=reached,
      gamma_bar=gamma_bar,
      tau=tau,
      x_mult=a,
      eps_mult=b,
      sigma=sigma,
      std=std,
      log_sigma_init=np.log(std).astype(f32),
      velocity_scale_init=eta[::-1].astype(f32),
      ddim_x_mult=ddim_a,
      ddim_eps_mult=ddim_b,
    )
  )


# ------------------------------------------------------------------------ DDPM T = 1000
@dataclasses.dataclass(frozen=True)
class DDPMAncestralSchedule:
  """Ho et al. ancestral sampling over all K = 1000 DDPM steps, in sampling order.

  Step t denoises diffusion index k = K-1-t:
    x_{t+1} = (x_t - beta_k / sqrt(1 - abar_k) eps(x_t, k)) / sqrt(alpha_k) + sigma_k z,
  written as a_t x + b_t eps, with sigma_k = sqrt(beta_tilde_k) (the posterior
  std, official ``calc_diffusion_hyperparams`` ``Sigma``, as FastDPM's standard
  sampler uses) and no noise at the last step (k = 0).  ``net_time`` = k.
  ``velocity_scale_init`` = beta_k (the per-step variance, the K-step analogue
  of VAR's eta).
  """

  num_steps: int
  x_mult: np.ndarray
  eps_mult: np.ndarray
  sigma: np.ndarray
  net_time: np.ndarray
  velocity_scale_init: np.ndarray


@functools.lru_cache(maxsize=None)
def ddpm_ancestral_schedule() -> DDPMAncestralSchedule:
  d = ddpm_schedule()
  k = np.arange(NUM_DIFFUSION_STEPS)[::-1]
  a = f32(1) / np.sqrt(d.alpha[k])
  b = -(d.beta[k] / np.sqrt(f32(1) - d.alpha_bar[k])) * a
  sigma = d.sigma[k].copy()
  sigma[-1] = 0
  return _freeze(
    DDPMAncestralSchedule(
      num_steps=NUM_DIFFUSION_STEPS,
      x_mult=a.astype(f32),
      eps_mult=b.astype(f32),
      sigma=sigma.astype(f32),
      net_time=k.astype(f32),
      velocity_scale_init=d.beta[k].astype(f32),
    )
  )


# ---------------------------------------------------------------------------- Karras / EDM
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
  """``get_sigmas_karras(n, ...)`` without the appended zero: float32 (n,), decreasing.

  sigma_i = (max^(1/rho) + r_i (min^(1/rho) - max^(1/rho)))^rho with r =
  torch.linspace(0, 1, n) in float32; the python-float constants are rounded
  to float32 before the float32 arithmetic, as torch does.  The power is taken
  in float64 and rounded once.
  """
  ramp = torch_linspace_f32(0.0, 1.0, n)
  min_inv = sigma_min ** (1.0 / rho)
  max_inv = sigma_max ** (1.0 / rho)
  base = f32(max_inv) + ramp * f32(min_inv - max_inv)
  return (base.astype(np.float64) ** rho).astype(f32)


@dataclasses.dataclass(frozen=True)
class KarrasSchedule:
  """Ancestral Karras schedule of ``OpenAIDiffusion`` (float32, sampling order).

  sigmas:               (T+1,) noise levels; sigma_T = 0 (``stochastic_last``
                        False) or sigma_min (True).
  sigma_up, sigma_down: (T,) ancestral split of sigma_t -> sigma_{t+1}:
                        up = sqrt(s1^2 (s0^2 - s1^2) / s0^2), down = sqrt(s1^2 - up^2).
  log_sigma_init:       log(max(sigma_up, 1e-3)) (official ``log_betas`` init).
  velocity_scale_init:  sigmas[:T]^2 (``DxMI_Trainer_Cond`` betas_for_q, forward order).
  """

  num_steps: int
  sigma_min: float
  sigma_max: float
  rho: float
  stochastic_last: bool
  sigmas: np.ndarray
  sigma_up: np.ndarray
  sigma_down: np.ndarray
  log_sigma_init: np.ndarray
  velocity_scale_init: np.ndarray


@functools.lru_cache(maxsize=None)
def karras_schedule(
  num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, stochastic_last: bool = False
) -> KarrasSchedule:
  num_steps = _check_steps(num_steps)
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
  if not rho > 0:
    raise ValueError(f"rho must be > 0, got {rho}")
  if stochastic_last:
    sigmas = karras_sigmas(num_steps + 1, sigma_min, sigma_max, rho)
  else:
    sigmas = np.concatenate([karras_sigmas(num_steps, sigma_min, sigma_max, rho), [f32(0)]])
  sigmas = sigmas.astype(f32)
  s0, s1 = sigmas[:-1], sigmas[1:]
  up = np.sqrt(s1**2 * (s0**2 - s1**2) / s0**2)
  down = np.sqrt(s1**2 - up**2)
  return _freeze(
    KarrasSchedule(
      num_steps=num_steps,
      sigma_min=float(sigma_min),
      sigma_max=float(sigma_max),
      rho=float(rho),
      stochastic_last=bool(stochastic_last),
      sigmas=sigmas,
      sigma_up=up.astype(f32),
      sigma_down=down.astype(f32),
      log_sigma_init=np.log(np.maximum(up, f32(1e-3))).astype(f32),
      velocity_scale_init=(s0**2).astype(f32),
    )
  )
