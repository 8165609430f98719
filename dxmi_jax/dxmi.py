"""DxMI as pure functions, in the order of the paper (and of reference §2g).

One iteration:

  1. rollout        x_0 ~ p_0, x_{t+1} ~ pi(.|x_t) for t = 0..T-1      (lax.scan, no gradient)
  2. avr_update     s_t <- a s_t + (1-a) mean (x_{t+1} - x_t)^2          (adaptive velocity regularisation)
  3. energy_step    one step on  mean E(data) - mean E(x_T) + gamma (mean E(data)^2 + mean E(x_T)^2)
  4. td_value_scan  for t = T-1 .. 0: one step on (V(x_t, t) - sg[V(x_{t+1}, t+1) + time cost])^2
  5. policy_update  DxDP: one step per minibatch on
                    V(x~_{t+1}, t+1) + 1[t < T-k] (tau2 c_t(x_t, x~_{t+1}) - tau1 log sigma_t),
                    x~_{t+1} = mu_theta(x_t, t) + sigma_t eps with fresh eps (reparameterised)

Every source of randomness of an iteration is drawn up front into a ``StepNoise``
(``draw_noise``) and passed in explicitly, so tests can inject the official
code's recorded noise and orderings into the very functions production runs.

Conventions: t = 0 is noise, t = T is data; the velocity scale s is stored in
sampling order (index t = transition t) for every trainer variant.  V(., T) is
the energy: either the value network itself at t = T (``separate_energy=False``,
the CIFAR/ImageNet trainers) or a separate energy network (the anomaly-detection
trainer, reference §2 EV).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dxmi_jax import parallel, shuffle
from dxmi_jax.policies.base import bcast
from dxmi_jax.state import DxMIState

Array = jax.Array


# --------------------------------------------------------------------------- config
AVR_INITS = ("policy", "sigma")


@dataclasses.dataclass(frozen=True)
class DxMIConfig:
  """Static hyper-parameters of one DxMI iteration (reference §5 table).

  tau1 / tau2:        entropy / velocity weights of the policy loss.
  gamma:              square penalty of the energy loss.
  adavelreg:          AVR EMA factor alpha (None: velocity scales stay fixed).
  time_cost_sig:      c_sig of the sigmoid time cost (0: none); center defaults to T // 2.
  time_cost:          constant added to every TD target.
  velocity_in_value:  add tau2 c_t to the TD target for t < T - k (None: never).
  entropy_in_value:   add -tau1 log sigma_t to the TD target for t < T - k (None: never).
  skip_sampler_tau:   k of the non-terminal mask 1[t < T - k] of the policy loss.
  value_grad_clip:    global-norm clip of each TD gradient (None: no clip).
  energy_grad_clip:   global-norm clip of the energy gradient (None: no clip).
  policy_grad_clip:   global-norm clip of each policy gradient (None: no clip).
  policy_minibatches: policy minibatches of B transitions per iteration, drawn without
                      replacement from the B*T buffer: 1 (CIFAR trainer, n_generator = 1)
                      up to T (every transition once, the ImageNet trainer).
  value_resample:     TD uses a freshly sampled x_{t+1} instead of the stored one.
  policy_train_mode:  run the policy network in training mode (dropout) in the policy update.
  separate_energy:    a separate energy network (EV trainer) rather than V(., T).
  avr_init:           initial velocity scales: "policy" (the policy's own, e.g. VAR eta; the
                      CIFAR/ImageNet trainers) or "sigma" (the EV trainer: s = exp(log_sigma)
                      at its init, read at T-1-t, i.e. exp(log_sigma_init[::-1]) in sampling
                      order; see ``initial_velocity_scale``).

  How the iteration is compiled (scan unrolling, gradient chunking) is not here: see
  ``Perf``.  Nor is where its arrays live: see ``parallel.ShardingRules``.
  """

  num_steps: int
  tau1: float = 0.1
  tau2: float = 0.01
  gamma: float = 1.0
  adavelreg: Optional[float] = 0.99
  time_cost_sig: float = 1.0
  time_cost_center: Optional[int] = None
  time_cost: float = 0.0
  velocity_in_value: Optional[int] = None
  entropy_in_value: Optional[int] = None
  skip_sampler_tau: int = 0
  value_grad_clip: Optional[float] = None
  energy_grad_clip: Optional[float] = None
  policy_grad_clip: Optional[float] = 0.1
  policy_minibatches: int = 1
  value_resample: bool = False
  policy_train_mode: bool = False
  separate_energy: bool = False
  avr_init: str = "policy"

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"num_steps (T) must be >= 1, got {self.num_steps}")
    if not 1 <= self.policy_minibatches <= self.num_steps:
      raise ValueError(f"policy_minibatches must be in [1, T={self.num_steps}], got {self.policy_minibatches}")
    if self.avr_init not in AVR_INITS:
      raise ValueError(f"avr_init must be one of {AVR_INITS}, got {self.avr_init!r}")

  @property
  def center(self) -> int:
    return self.num_steps // 2 if self.time_cost_center is None else self.time_cost_center


@dataclasses.dataclass(frozen=True)
class Perf:
  """How one DxMI iteration is compiled: switches of speed and memory only (``config.perf``).

  They never change what is computed beyond float summation order: the golden tests
  compare every setting against the default.

  rollout_unroll / td_unroll:  how the rollout and TD ``lax.scan``s are compiled: 1 a loop,
                      k > 1 k steps per loop trip, 0 (or >= T) fully unrolled, which compiles
                      longer and, since models/conv.py, no longer runs faster on a CPU
                      (configs/default.py ``perf``; docs/speed.md).
  policy_grad_chunks: K: each policy minibatch's gradient is accumulated over K chunks of
                      its rows, one UNet forward/backward per chunk (lax.scan), so the
                      backward's activations are those of B/K rows (memory only: the step
                      is the same up to float summation order; dropout masks differ).  The
                      chunks take every K-th row, so each device's share of a chunk is its
                      own B/(nK) rows and nothing moves between devices.  1: one gradient.
  """

  rollout_unroll: int = 1
  td_unroll: int = 1
  policy_grad_chunks: int = 1

  def __post_init__(self):
    if self.policy_grad_chunks < 1:
      raise ValueError(f"policy_grad_chunks must be >= 1, got {self.policy_grad_chunks}")

  @staticmethod
  def unroll(k: int, num_steps: int):
    """``lax.scan``'s unroll argument for a ``num_steps``-step scan from a setting k (0: full)."""
    return True if k <= 0 or k >= num_steps else int(k)


@flax.struct.dataclass
class StepNoise:
  """All randomness of one iteration.  Leading batch axis B is the global batch.

  x0:            (B, ...)       the prior draw x_0.
  rollout:       (T, B, ...)    the noise of rollout step t.
  policy_index:  (M, B) int32   buffer rows of each policy minibatch; row r is
                                transition (t = r // B, sample b = r % B).
  policy_noise:  (M, B, ...)    fresh noise of the reparameterised policy steps.
  td_order:      (T, B) int32 or None: the order of the B samples of each timestep
                 in the TD minibatch (None: as stored; it only reorders a mean).
  resample:      (T, B, ...) or None: noise of the value_resample draws.
  dropout:       PRNG key for dropout in the policy update.
  """

  x0: Array
  rollout: Array
  policy_index: Array
  policy_noise: Array
  td_order: Optional[Array]
  resample: Optional[Array]
  dropout: Array


# --------------------------------------------------------------------- trajectories
@flax.struct.dataclass
class Trajectory:
  """A rollout: per-step arrays with a leading T axis (sampling order)."""

  states: Array  # (T, B, ...) x_t
  next_states: Array  # (T, B, ...) x_{t+1}
  means: Array  # (T, B, ...)
  sigmas: Array  # (T, B)
  log_sigmas: Array  # (T, B) log sigma used for the entropy

  @property
  def final(self):
    return self.next_states[-1]


def rollout(policy, policy_params, x0, noise, y=None, unroll=1) -> Trajectory:
  """Runs the T-step chain from x0 with the given per-step noise (no gradient).

  The network runs in evaluation mode, as the official trainers' rollouts do.
  ``unroll``: lax.scan's (``Perf.unroll(perf.rollout_unroll, T)``).
  """
  params = jax.lax.stop_gradient(policy_params)

  def body(x, inputs):
    t, eps = inputs  # one step t for the whole batch
    out = policy.step(params, x, t, eps, y)
    return out.sample, (x, out.sample, out.mean, out.sigma, out.log_sigma)

  _, (states, nexts, means, sigmas, log_sigmas) = jax.lax.scan(
    body, x0, (jnp.arange(policy.num_steps, dtype=jnp.int32), noise), unroll=unroll
  )
  return Trajectory(states, nexts, means, sigmas, log_sigmas)


# ------------------------------------------------------------------------------ AVR
def mean_over_dims(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def avr_update(velocity_scale, traj: Trajectory, alpha):
  """Adaptive velocity regularisation: s_t <- alpha s_t + (1 - alpha) E(x_{t+1} - x_t)^2.

  m_t averages over the batch and every data dimension.  Sampling order
  throughout.  Returns (new s, m).
  """
  diff = traj.next_states - traj.states
  m = jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=-1)
  if alpha is None:
    return velocity_scale, m
  return alpha * velocity_scale + (1.0 - alpha) * m, m


def initial_velocity_scale(policy, cfg: "DxMIConfig"):
  """(T,) float32 initial s_t in sampling order.

  "policy": the policy's own (VAR eta[T-1-t], EDM sigma_t^2, ...).  "sigma": what
  DxMI_Trainer_EV does with use_sampler_beta: betas_for_q = exp(log_betas) (a standard
  deviation, not a variance, and in the sampler's index order) read at T-1-t, so
  transition t starts at exp(log_sigma_init[T-1-t]); recorded in dxmi_iteration_ev_2d.npz.
  """
  if cfg.avr_init == "sigma":
    return np.exp(np.asarray(policy.init_log_sigma(), np.float32))[::-1].copy()
  return np.asarray(policy.init_velocity_scale(), np.float32)


def running_cost(x, x_next, s_t):
  """c_t = mean over dims (x_{t+1} - x_t)^2 / (2 s_t), per sample; s_t is (B,)."""
  return mean_over_dims(jnp.square(x_next - x) / bcast(2.0 * s_t, x))


# --------------------------------------------------------------------------- energy
def energy_loss(energy_apply, params, x_data, x_neg, y, gamma):
  """L_E = mean e+ - mean e- + gamma (mean e+^2 + mean e-^2), data first in one batch."""
  b = x_data.shape[0]
  x = jnp.concatenate([x_data, x_neg], axis=0)
  yy = None if y is None else jnp.concatenate([y, y], axis=0)
  out = energy_apply(params, x, yy)
  pos, neg = out[:b], out[b:]
  pos_mean, neg_mean = jnp.mean(pos), jnp.mean(neg)
  reg = jnp.mean(jnp.square(pos)) + jnp.mean(jnp.square(neg))
  loss = pos_mean - neg_mean + gamma * reg
  return loss, {"pos_e": pos_mean, "neg_e": neg_mean, "reg": reg, "d_loss": loss}


def clip_by_global_norm(grads, max_norm):
  """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).

  Returns (clipped grads, pre-clip norm).  ``max_norm=None`` only measures.
  """
  norm = optax.tree.norm(grads)
  if max_norm is None:
    return grads, norm
  coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
  return jax.tree.map(lambda g: g * coef.astype(g.dtype), grads), norm


def energy_step(energy_state, energy_apply, x_data, x_neg, y, cfg: DxMIConfig):
  """One optimiser step of the energy on data vs the rollout's final states."""
  grad_fn = jax.value_and_grad(
    lambda p: energy_loss(energy_apply, p, x_data, jax.lax.stop_gradient(x_neg), y, cfg.gamma), has_aux=True
  )
  (_, aux), raw_grads = grad_fn(energy_state.params)
  grads, gnorm = clip_by_global_norm(raw_grads, cfg.energy_grad_clip)
  aux = dict(aux, grad_norm=gnorm, grads=grads, grads_preclip=raw_grads)
  return energy_state.apply_gradients(grads=grads), aux


# ------------------------------------------------------------------------ TD values
def time_cost(t, cfg: DxMIConfig):
  """c_sig (sigmoid(c - t) - sigmoid(c - t - 1)), t the integer step of the state."""
  tf = t.astype(jnp.float32)
  a = jax.nn.sigmoid(cfg.center - tf)
  b = jax.nn.sigmoid(cfg.center - tf - 1.0)
  return cfg.time_cost_sig * a, cfg.time_cost_sig * b


def td_value_scan(
  value_state,
  value_apply,
  traj: Trajectory,
  velocity_scale,
  cfg: DxMIConfig,
  *,
  y=None,
  td_order=None,
  energy_final=None,
  next_states=None,
  perf: Perf = Perf(),
):
  """T sequential TD steps, t = T-1 down to 0, each one optimiser step on B states.

  Target of V(x_t, t), with the value network as updated by the previous step:
      V(x_{t+1}, t+1) [E(x_T) at t = T-1 when the energy is separate]
      + time cost + tau2 c_t 1[velocity] - tau1 log sigma_t 1[entropy]      (no gradient)
  ``energy_final``: (B,) the separate energy network at the t = T-1 next state (the resampled
  one under value_resample, as DxMI_Trainer_EV), or None.
  ``next_states``: (T, B, ...) replacement next states (value_resample), or None.
  ``perf``: its ``td_unroll`` compiles the scan.
  Returns (new value state, per-step aux with a leading axis in sampling order t).
  """
  T = cfg.num_steps
  nexts = traj.next_states if next_states is None else next_states
  xs = {"t": jnp.arange(T, dtype=jnp.int32), "x": traj.states, "x_next": nexts, "log_sigma": traj.log_sigmas}
  if td_order is not None:  # reorder the B samples of each timestep block
    take = jax.vmap(lambda a, idx: jnp.take(a, idx, axis=0))
    xs = {k: (v if k == "t" else take(v, td_order)) for k, v in xs.items()}
  ys = None if y is None else (y[td_order] if td_order is not None else jnp.broadcast_to(y, (T,) + y.shape))
  if ys is not None:
    xs["y"] = ys
  if energy_final is not None:
    ef = energy_final if td_order is None else energy_final[td_order[T - 1]]
    xs["e_final"] = jnp.zeros((T,) + ef.shape, ef.dtype).at[T - 1].set(ef)
  xs = jax.tree.map(lambda a: a[::-1], xs)  # backward order: t = T-1 first

  def body(state, inp):
    t, x, x_next = inp["t"], inp["x"], inp["x_next"]
    yb = inp.get("y")
    b = x.shape[0]
    tb = jnp.full((b,), t, jnp.int32)
    v_next = value_apply(state.params, x_next, tb + 1, yb)
    if "e_final" in inp:
      v_next = jnp.where(t == T - 1, inp["e_final"], v_next)
    sig_a, sig_b = time_cost(tb, cfg)
    target = (v_next + sig_a) - sig_b + cfg.time_cost
    rc = running_cost(x, x_next, jnp.full((b,), velocity_scale[t]))
    if cfg.velocity_in_value is not None:
      target = target + cfg.tau2 * rc * (t < T - cfg.velocity_in_value)
    if cfg.entropy_in_value is not None:
      target = target - cfg.tau1 * inp["log_sigma"] * (t < T - cfg.entropy_in_value)
    target = jax.lax.stop_gradient(target)

    def loss_fn(p):
      v = value_apply(p, x, tb, yb)
      return jnp.mean(jnp.square(v - target)), v

    (loss, v_xt), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads, gnorm = clip_by_global_norm(grads, cfg.value_grad_clip)
    new_state = state.apply_gradients(grads=grads)
    aux = {
      "v_next": v_next,
      "target": target,
      "v_xt": v_xt,
      "v_loss": loss,
      "running_cost": rc,
      "grad_norm": gnorm,
      "grads": grads,
      "params_after": new_state.params,
      "finite": jnp.isfinite(loss) & jnp.isfinite(gnorm),
    }
    return new_state, aux

  value_state, aux = jax.lax.scan(body, value_state, xs, unroll=Perf.unroll(perf.td_unroll, T))
  return value_state, jax.tree.map(lambda a: a[::-1], aux)  # back to sampling order


# --------------------------------------------------------------------------- policy
def policy_loss(
  policy_params,
  policy,
  value_apply,
  value_params,
  x,
  t,
  noise,
  y,
  velocity_scale,
  cfg: DxMIConfig,
  *,
  energy_apply=None,
  energy_params=None,
  rngs=None,
):
  """DxDP loss on a minibatch of states x_t with per-sample steps t (B,).

  x~ = mu_theta(x_t, t) + sigma_t(phi) eps (fresh eps; gradients reach theta and phi)
  L  = mean[ V(x~, t+1) + 1[t < T - k] (tau2 c_t(x_t, x~) - tau1 log sigma_t) ]
  The value (and energy) parameters are constants here.
  """
  T = cfg.num_steps
  out = policy.step(policy_params, x, t, noise, y, train=cfg.policy_train_mode, rngs=rngs)
  rc = running_cost(x, out.sample, velocity_scale[t])
  value_term = value_apply(jax.lax.stop_gradient(value_params), out.sample, t + 1, y)
  if energy_apply is not None:
    e = energy_apply(jax.lax.stop_gradient(energy_params), out.sample, y)
    value_term = jnp.where(t + 1 == T, e, value_term)
  non_terminal = (t < T - cfg.skip_sampler_tau).astype(jnp.float32)
  loss = jnp.mean(value_term + (cfg.tau2 * rc - cfg.tau1 * out.log_sigma) * non_terminal)
  aux = {
    "sampler_loss": loss,
    "value_term": value_term,
    "running_cost": rc,
    "causal_entropy": out.log_sigma,
    "non_terminal": non_terminal,
    "mean": out.mean,
    "next_state": out.sample,
    "sigma": out.sigma,
  }
  return loss, aux


def gather_transitions(traj: Trajectory, index, y=None):
  """Buffer rows (row r = transition (r // B, r % B)) -> (states, t, y)."""
  batch = traj.states.shape[1]
  t, b = index // batch, index % batch
  states = traj.states[t, b]
  return states, t.astype(jnp.int32), (None if y is None else y[b])


def _chunked_loss_and_grad(loss_and_grad, rows, key, K, constrain, params):
  """(aux, mean gradient) of a minibatch from K chunks of its rows (``policy_grad_chunks``).

  Chunk k holds rows k, k + K, k + 2K, ...: the (B,) axis is reshaped to (B/K, K), so a
  device's contiguous block of rows splits into its own part of every chunk.  The loss is
  a mean over rows, so the minibatch gradient is the mean of the K chunk gradients; per-row
  outputs are put back in row order and the loss is the mean of the chunk losses.
  """
  B = rows[0].shape[0]
  if B % K:
    raise ValueError(f"policy_grad_chunks={K} must divide the policy minibatch ({B} rows)")

  def split(a):
    return None if a is None else constrain(jnp.moveaxis(a.reshape((B // K, K) + a.shape[1:]), 1, 0), 1)

  def merge(a):  # (K, B/K, ...) -> (B, ...) in row order
    return jnp.moveaxis(a, 0, 1).reshape((B,) + a.shape[2:])

  def body(total, inp):
    chunk, k = inp
    (_, aux), grads = loss_and_grad(chunk, jax.random.fold_in(key, k))
    return jax.tree.map(jnp.add, total, grads), aux

  zeros = jax.tree.map(jnp.zeros_like, params)
  chunks = tuple(split(a) for a in rows)
  total, aux = jax.lax.scan(body, zeros, (chunks, jnp.arange(K)))
  aux = {n: (jnp.mean(v) if v.ndim == 1 else merge(v)) for n, v in aux.items()}
  return aux, jax.tree.map(lambda g: g / K, total)


def policy_update(
  policy_state,
  policy,
  value_apply,
  value_params,
  traj: Trajectory,
  velocity_scale,
  noise: StepNoise,
  cfg: DxMIConfig,
  *,
  y=None,
  energy_apply=None,
  energy_params=None,
  constrain=lambda tree, axis: tree,
  guard=None,
  perf: Perf = Perf(),
):
  """One optimiser step per policy minibatch (lax.scan over the M minibatches).

  ``constrain`` (as in ``dxmi_iteration``) shards each minibatch's indices, noise and
  gathered rows along the data axis: the draw is the global one (rows without
  replacement from the B*T buffer), but every device gathers and computes only its
  B / n rows of it, so the UNet forward/backward of the minibatch is split too.

  ``guard`` (a bool scalar, or None for no guard): a minibatch's step is applied only
  while ``guard`` holds and every minibatch so far had a finite loss and gradient norm;
  otherwise the state passes through unchanged.  The select is elementwise on the
  updated leaves, so XLA does it in place: the policy state is never held twice
  (the train step's non-finite guard uses this instead of keeping a copy of it).
  """
  M = noise.policy_index.shape[0]
  keys = jax.random.split(noise.dropout, M)
  guarded = guard is not None

  def body(carry, inp):
    state, ok = carry if guarded else (carry, None)
    index, eps, key = inp
    index, eps = constrain(index, 0), constrain(eps, 0)
    x, t, yb = constrain(gather_transitions(traj, index, y), 0)

    def loss_and_grad(rows, key):
      cx, ct, ce, cy = rows
      return jax.value_and_grad(policy_loss, has_aux=True)(
        state.params,
        policy,
        value_apply,
        value_params,
        cx,
        ct,
        ce,
        cy,
        velocity_scale,
        cfg,
        energy_apply=energy_apply,
        energy_params=energy_params,
        rngs={"dropout": key},
      )

    if perf.policy_grad_chunks == 1:
      (_, aux), grads = loss_and_grad((x, t, eps, yb), key)
    else:
      aux, grads = _chunked_loss_and_grad(
        loss_and_grad, (x, t, eps, yb), key, perf.policy_grad_chunks, constrain, state.params
      )
    grads, gnorm = clip_by_global_norm(grads, cfg.policy_grad_clip)
    finite = jnp.isfinite(aux["sampler_loss"]) & jnp.isfinite(gnorm)
    if guarded:  # the step itself is conditional: no second copy of the state exists
      ok = ok & finite
      new_state = jax.lax.cond(ok, lambda s: s.apply_gradients(grads=grads), lambda s: s, state)
    else:
      new_state = state.apply_gradients(grads=grads)
    aux = dict(aux, t=t, state=x, grad_norm=gnorm, grads=grads, params_after=new_state.params, finite=finite)
    if not guarded:
      return new_state, aux
    return (new_state, ok), aux

  xs = (constrain(noise.policy_index, 1), constrain(noise.policy_noise, 1), keys)
  init = (policy_state, jnp.asarray(guard, bool)) if guarded else policy_state
  if M == 1:  # one minibatch (the CIFAR trainer): no loop.  XLA:CPU runs a UNet gradient
    # inside a while loop many times slower than outside one.
    carry, aux = body(init, jax.tree.map(lambda a: a[0], xs))
    aux = jax.tree.map(lambda a: a[None], aux)
  else:
    carry, aux = jax.lax.scan(body, init, xs)
  return (carry[0] if guarded else carry), aux


# ----------------------------------------------------------------------- iteration
@dataclasses.dataclass(frozen=True)
class Networks:
  """The static parts of a DxMI model: the policy and the apply functions.

  value_apply(params, x, t, y) -> (B,);  energy_apply(params, x, y) -> (B,) or None
  (None: the energy is value_apply(., T)).
  """

  policy: Any
  value_apply: Callable
  energy_apply: Optional[Callable] = None


def module_apply(module, with_time: bool = True):
  """Wraps a Flax module with signature (x, t, y=None) into an apply returning (B,)."""

  def apply(params, x, *args):
    if with_time:
      t, y = args
    else:  # an energy network: it gets a dummy time input it ignores
      (y,), t = args, jnp.zeros((x.shape[0],), jnp.int32)
    kwargs = {} if y is None else {"y": y}
    out = module.apply({"params": params}, x, t, **kwargs)
    return out.reshape(x.shape[0])

  return apply


def draw_noise(rng, data_shape, cfg: DxMIConfig, policy, constrain=lambda tree, axis: tree) -> StepNoise:
  """Production randomness of one iteration from one key (device-count independent).

  Every Gaussian of the iteration comes from one draw of shape (1 + T + M [+ T], B, ...),
  split along its first axis into x_0 (times the prior's std), the rollout, the policy
  and the value_resample noise; the policy minibatches are the first M*B rows of one
  permutation of the B*T buffer rows (``shuffle.permutation``).  One draw instead of
  four: on a CPU each is a loop of many small kernels (jax's threefry).  ``constrain``
  (as in ``dxmi_iteration``) shards the draw along its batch axis, so that each device
  generates only its own rows.
  """
  T, M = cfg.num_steps, cfg.policy_minibatches
  B = data_shape[0]
  k_gauss, k_perm, k_drop = jax.random.split(rng, 3)
  R = T if cfg.value_resample else 0
  z = constrain(jax.random.normal(k_gauss, (1 + T + M + R,) + tuple(data_shape), jnp.float32), 1)
  perm = shuffle.permutation(k_perm, T * B)[: M * B].reshape(M, B)
  return StepNoise(
    x0=policy.prior_std * z[0],
    rollout=z[1 : 1 + T],
    policy_index=perm,
    policy_noise=z[1 + T : 1 + T + M],
    td_order=None,
    resample=z[1 + T + M :] if R else None,
    dropout=k_drop,
  )


def resample_next_states(policy, policy_params, traj: Trajectory, noise, y=None):
  """value_resample: x_{t+1} ~ pi(.|x_t) afresh for every stored x_t (evaluation mode)."""
  params = jax.lax.stop_gradient(policy_params)
  T = traj.states.shape[0]

  def one(x, t, eps):
    return policy.step(params, x, t, eps, y).sample

  return jax.lax.map(lambda a: one(*a), (traj.states, jnp.arange(T, dtype=jnp.int32), noise))


def dxmi_iteration(
  state: DxMIState,
  batch,
  noise: StepNoise,
  nets: Networks,
  cfg: DxMIConfig,
  constrain=lambda tree, axis: tree,
  guard_policy: bool = False,
  perf: Perf = Perf(),
):
  """One full DxMI iteration.  Returns (new state, aux of every stage).

  ``batch``: {"x": (B, ...) data, optionally "y": (B,) labels and "x0": (B, ...) chain starts
  that replace the prior draw noise.x0}.
  ``constrain(tree, batch_axis)``: sharding constraint hook (identity on one device;
  ``parallel.ShardingRules.constrain``).
  ``perf``: how the scans and the policy gradient are compiled (the same result).
  ``guard_policy``: apply the policy steps only while the energy step, the TD steps and
  the policy minibatches so far are finite (``policy_update``'s ``guard``).
  """
  x_data, y = batch["x"], batch.get("y")
  policy = nets.policy
  energy_apply = nets.energy_apply
  if cfg.separate_energy != (energy_apply is not None):
    raise ValueError("cfg.separate_energy must be True exactly when an energy network is given")
  T = cfg.num_steps
  energy_of_value = lambda p, x, yy: nets.value_apply(p, x, jnp.full((x.shape[0],), T, jnp.int32), yy)
  # 1. rollout, from the prior draw or, when the data provides it, from batch["x0"]
  # (e.g. diffused training samples: the anomaly project's chains start near the data)
  x0 = policy.project(noise.x0) if "x0" not in batch else batch["x0"]
  traj = rollout(
    policy,
    state.policy.params,
    constrain(x0, 0),
    constrain(noise.rollout, 1),
    y,
    unroll=Perf.unroll(perf.rollout_unroll, T),
  )
  traj = constrain(traj, 1)
  # 2. AVR
  s_new, avr_m = avr_update(state.velocity_scale, traj, cfg.adavelreg)
  # 3. energy step
  if cfg.separate_energy:
    energy_state, e_aux = energy_step(state.energy, energy_apply, x_data, traj.final, y, cfg)
    value_state = state.value
  else:
    value_state, e_aux = energy_step(state.value, energy_of_value, x_data, traj.final, y, cfg)
    energy_state = state.energy
  # 4. TD value scan
  next_states = None
  if cfg.value_resample:
    next_states = constrain(resample_next_states(policy, state.policy.params, traj, noise.resample, y), 1)
  energy_final = None
  if cfg.separate_energy:  # the TD target at t = T-1 is f of the state the target's running cost
    # uses: the resampled x_T under value_resample (DxMI_Trainer_EV), else the stored one
    x_final = traj.final if next_states is None else next_states[T - 1]
    energy_final = energy_apply(energy_state.params, x_final, y)
  value_state, td_aux = td_value_scan(
    value_state,
    nets.value_apply,
    traj,
    s_new,
    cfg,
    y=y,
    td_order=noise.td_order,
    energy_final=energy_final,
    next_states=next_states,
    perf=perf,
  )
  # 5. policy update(s)
  policy_state, pol_aux = policy_update(
    state.policy,
    policy,
    nets.value_apply,
    value_state.params,
    traj,
    s_new,
    noise,
    cfg,
    y=y,
    energy_apply=energy_apply,
    energy_params=None if energy_state is None else energy_state.params,
    constrain=constrain,
    guard=(
      jnp.isfinite(e_aux["d_loss"]) & jnp.isfinite(e_aux["grad_norm"]) & jnp.all(td_aux["finite"])
      if guard_policy
      else None
    ),
    perf=perf,
  )
  new_state = state.replace(policy=policy_state, value=value_state, energy=energy_state, velocity_scale=s_new)
  aux = {"traj": traj, "avr_m": avr_m, "energy": e_aux, "td": td_aux, "policy": pol_aux}
  return new_state, aux


def iteration_metrics(state: DxMIState, aux):
  """The scalars (and per-step vectors) the official trainers log (reference §2f)."""
  e, td, pol = aux["energy"], aux["td"], aux["policy"]
  sq = lambda tree: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))
  m = {
    "ebm/d_loss": e["d_loss"],
    "ebm/pos_e": e["pos_e"],
    "ebm/neg_e": e["neg_e"],
    "ebm/reg": e["reg"],
    "ebm/grad_norm": e["grad_norm"],
    "ebm/v_loss": td["v_loss"][0],
    "ebm/running_cost": jnp.mean(td["running_cost"][0]),
    "running_cost/step": jnp.mean(td["running_cost"], axis=-1),  # (T,) per step t
    "value/step": jnp.mean(td["v_xt"], axis=-1),  # (T,) V(x_t) before its TD step
    "td/v_loss": td["v_loss"],  # (T,)
    "adavelreg/beta": state.velocity_scale,  # (T,) sampling order
    "sampler/sampler_loss": pol["sampler_loss"][-1],
    "sampler/sampler_value_loss": jnp.mean(pol["value_term"][-1]),
    "sampler/running_cost": jnp.mean(pol["running_cost"][-1]),
    "sampler/causal_entropy": jnp.mean(pol["causal_entropy"][-1]),
    "sampler/grad_norm": pol["grad_norm"][-1],
    "sigma/sigma": jnp.exp(state.policy.params["log_sigma"]),  # (T,)
    "weight_norm/sampler": sq(state.policy.params),
    "weight_norm/value": sq(state.value.params),
    "sample/final_norm": jnp.mean(
      jnp.sqrt(jnp.sum(jnp.square(aux["traj"].final.reshape(aux["traj"].final.shape[0], -1)), -1))
    ),
  }
  if state.energy is not None:
    m["weight_norm/energy"] = sq(state.energy.params)
  finite = {
    "ebm/d_loss": jnp.isfinite(e["d_loss"]) & jnp.isfinite(e["grad_norm"]),
    "td/v_loss": jnp.all(td["finite"]),
    "sampler/sampler_loss": jnp.all(pol["finite"]),
  }
  return m, finite


#: the quantities checked for finiteness, in the bit order of DxMIState.nonfinite_mask
NONFINITE_QUANTITIES = ("ebm/d_loss", "td/v_loss", "sampler/sampler_loss")


def make_train_step(
  nets: Networks,
  cfg: DxMIConfig,
  data_shape,
  perf: Perf = Perf(),
  rules: Optional[parallel.ShardingRules] = None,
):
  """Builds ``train_step(state, batch) -> (state, metrics)``, one XLA program.

  Randomness is ``fold_in(state.rng, state.step)``: a function of the seed and the
  step only, never of the device count.  Where arrays live is ``rules``'s business
  (``parallel.ShardingRules``; default: no constraint, one device): its ``constrain``
  shards every batch-major array (data parallelism), ``gather_params`` gives the
  parameters their compute layout (FSDP: all-gathered once per iteration) and
  ``stored`` puts the state back in its stored layout.  ``perf`` compiles the scans
  and the policy gradient (``Perf``).  An iteration whose
  losses or gradient norms are not finite is skipped (the state is kept, the step
  and the skip counters advance).  The policy state is guarded in place, without a
  second copy of it: its steps stop at the first non-finite quantity, so when a later
  policy minibatch (M > 1) is the first non-finite one, the policy keeps the earlier
  minibatches' steps; everything else returns to its state before the iteration.
  """
  rules = parallel.ShardingRules() if rules is None else rules

  def train_step(state: DxMIState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    noise = draw_noise(key, data_shape, cfg, nets.policy, rules.constrain)
    new_state, aux = dxmi_iteration(
      rules.gather_params(state), batch, noise, nets, cfg, rules.constrain, guard_policy=True, perf=perf
    )
    new_state = rules.stored(new_state)  # back to the stored layout before the guard
    metrics, finite = iteration_metrics(new_state, aux)
    ok = jnp.all(jnp.stack(list(finite.values())))
    # the policy (the big state) was guarded in place by policy_update; the rest is rolled back here
    kept = jax.tree.map(
      lambda n, o: jnp.where(ok, n, o), new_state.replace(policy=None), state.replace(policy=None)
    ).replace(policy=new_state.policy)
    run = jnp.where(ok, 0, state.consecutive_skips + 1)
    mask = sum(jnp.where(v, 0, 1 << i) for i, v in enumerate(finite.values()))
    kept = kept.replace(
      step=state.step + 1,
      skipped=state.skipped + (~ok).astype(jnp.int32),
      consecutive_skips=run,
      max_skip_run=jnp.maximum(state.max_skip_run, run),
      nonfinite_mask=jnp.where(ok, state.nonfinite_mask, mask).astype(jnp.int32),
    )
    metrics["nonfinite/skipped_total"] = kept.skipped
    metrics.update({f"nonfinite/{k}": (~v).astype(jnp.int32) for k, v in finite.items()})
    return rules.stored(kept), metrics

  return train_step
