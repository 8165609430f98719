"""benchmarks/official_step_time.py (the official trainer's timing harness) and step_time.py's --official
checks. The real official code runs in its own virtualenv (docs/speed.md); here a stand-in tree with
the same module names records the calls, so the harness's loop and output are checked offline."""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

HARNESS = REPO / "benchmarks" / "official_step_time.py"

FAKE = {
  "models/__init__.py": "",
  "models/DxMI/__init__.py": "",
  "models/DxMI/trainer.py": """
    import torch
    CALLS = []
    def reset_buffer(device):
      CALLS.append("reset_buffer")
      return {}
    def append_buffer(buf, d):
      CALLS.append("append_buffer")
      buf["d"] = d
    class DxMI_Trainer:
      def __init__(self, batchsize, n_timesteps, **kw):
        CALLS.append(("init", batchsize, n_timesteps, kw["tau1"], kw["tau2"]))
      def set_models(self, f, v, sampler, optimizer, optimizer_fstar, optimizer_v):
        self.sampler = sampler
      def update_f_v(self, img, d_sample, state_dict):
        assert state_dict["d"] is d_sample
        CALLS.append(("update_f_v", tuple(img.shape)))
      def update_sampler(self, state_dict, n_generator):
        CALLS.append(("update_sampler", n_generator))
        if len([c for c in CALLS if c[0] == "update_sampler"]) == 3:
          print("CALLS=" + repr(CALLS))
  """,
  "models/DxMI/var_sampler.py": """
    import torch
    from models.DxMI.trainer import CALLS
    class VARSampler(torch.nn.Module):
      def __init__(self, net, n_timesteps, sample_shape, trainable_beta):
        super().__init__()
        self.net, self.T, self.shape = net, n_timesteps, sample_shape
        net.log_betas = torch.nn.Parameter(torch.zeros(n_timesteps))
      def sample(self, n, device="cpu"):
        CALLS.append(("sample", n, self.training))
        x = torch.randn(n, *self.shape)
        return {"sample": self.net(x, torch.ones(n))}
  """,
  "loader/synthetic.py": """
    import numpy as np
    def sample2d(name, n):
      assert name == "8gaussians"
      return np.zeros((n, 2), np.float32)
  """,
}


def _run(*args):
  return subprocess.run([sys.executable, str(HARNESS), *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.torch
def test_times_the_official_loop_and_prints_one_json_line(tmp_path):
  pytest.importorskip("torch")
  for name, text in FAKE.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(textwrap.dedent(text))
  out = _run(f"--official={tmp_path}", "--preset=2d", "--batch=16", "--steps=3", "--iters=2", "--warmup=1")
  assert out.returncode == 0, out.stderr
  calls_line = next(line for line in out.stdout.splitlines() if line.startswith("CALLS="))
  calls = eval(calls_line[len("CALLS=") :])  # noqa: S307 (our own repr)
  assert calls[0] == ("init", 16, 3, 0.1, 0.01)
  per_iteration = ["reset_buffer", ("sample", 16, False), "append_buffer", ("update_f_v", (16, 2, 1, 1))]
  per_iteration.append(("update_sampler", 1))
  assert calls[1:] == per_iteration * 3  # warmup 1 + 2 timed, each: buffer, rollout in eval mode, f/v, sampler
  record = json.loads(out.stdout.strip().splitlines()[-1])
  assert record["impl"] == "official-pytorch" and record["n"] == 2 and record["T"] == 3 and record["batch"] == 16
  assert record["median_s_per_iter"] > 0


@pytest.mark.parametrize(
  "args, message",
  [
    (["--official=/nonexistent"], "error: --official: '/nonexistent' has no models/DxMI/trainer.py"),
    (["--official=/nonexistent", "--batch=0"], "error: --batch must be >= 1, got 0"),
  ],
)
def test_bad_arguments_are_one_error_line(args, message):
  out = _run(*args)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), out.stderr


def test_step_time_checks_official_before_compiling(tmp_path):
  cmd = [sys.executable, "benchmarks/step_time.py", "--config=configs/gaussians2d.py", f"--official={tmp_path}"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 2, out.stderr[-2000:]
  assert (
    out.stderr.strip().splitlines()[-1].startswith(f"error: --official: '{tmp_path}' has no models/DxMI/trainer.py")
  )
  assert "compiling" not in out.stderr
