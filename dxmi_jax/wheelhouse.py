"""A wheelhouse for a compute node without internet (docs/offline_install.md).

On a machine with internet, from a clone of the repository:

    python -m dxmi_jax.wheelhouse download --dest=wheelhouse --python-version=3.12 \\
        --platform=manylinux_2_28_x86_64 --skip=jax==0.12.0.1 --skip=jaxlib==0.12.0.1 [--extras=test]

resolves our dependencies for the *target* interpreter and platform (not this machine's), leaves out the
packages the node already has (``--skip=NAME==VERSION``, the node's version, so that every other wheel
is chosen to work with it; ``--skip=NAME`` resolves against the newest), downloads the rest as wheels,
and builds the wheel of dxmi-jax itself. Copy the folder to the node, then there:

    python -m pip install --no-index --find-links=wheelhouse dxmi-jax[test]

(or ``python -m dxmi_jax.wheelhouse install --from=wheelhouse``, which prints and runs that command).

Stdlib and pip only, so it runs before anything else is installed. The requirements are read from
``setup.py`` (its ``install_requires`` / ``extras_require`` literals) when run from a clone, else
from the installed package's metadata: one list, never copied.
"""

import argparse
import ast
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "dxmi-jax"


class WheelhouseError(Exception):
  """Bad arguments or a failed pip call: one line for the user."""


def canonical(name):
  """PEP 503 normalised project name: ``Orbax_Checkpoint`` -> ``orbax-checkpoint``."""
  return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extras=(), setup_py=REPO / "setup.py"):
  """Our requirement strings (install_requires plus the named extras)."""
  if setup_py.exists():
    tree = ast.parse(setup_py.read_text(encoding="utf-8"))
    kw = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
        kw = {k.arg: k.value for k in node.keywords}
    base = ast.literal_eval(kw["install_requires"])
    extra_map = ast.literal_eval(kw.get("extras_require", ast.Dict(keys=[], values=[])))
  else:
    from importlib import metadata

    reqs = metadata.requires(NAME) or []
    base = [r for r in reqs if "extra ==" not in r]
    extra_map = {}
    for r in reqs:
      m = re.search(r";\s*extra\s*==\s*['\"]([^'\"]+)['\"]", r)
      if m:
        extra_map.setdefault(m.group(1), []).append(r[: m.start()].strip())
  unknown = [e for e in extras if e not in extra_map]
  if unknown:
    raise WheelhouseError(f"--extras: unknown extra {unknown[0]!r}; expected one of {sorted(extra_map)}")
  return list(base) + [r for e in extras for r in extra_map[e]]


def parse_skip(skips):
  """``["jax==0.6.2", "torch"]`` -> ({"jax", "torch"}, ["jax==0.6.2"]): names left out, pins kept."""
  names, pins = set(), []
  for s in skips:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*", s)
    if not m:
      raise WheelhouseError(f"--skip: {s!r} is not NAME or NAME==VERSION")
    names.add(canonical(m.group(1)))
    if m.group(2):
      pins.append(f"{m.group(1)}=={m.group(2)}")
  return names, pins


_LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def expand_platforms(platforms):
  """Every tag a node of these platforms accepts.  pip takes ``--platform`` literally, so a node with
  glibc 2.28 (``manylinux_2_28_x86_64``) must also list manylinux_2_27 ... 2_17 and their legacy names,
  or a wheel such as jaxlib's ``manylinux_2_27`` is missed and the resolver silently picks an older
  release that has a tag it knows."""
  out = []
  for p in platforms:
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", p)
    legacy = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", p)
    if m:
      major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
    elif legacy:
      (major, minor), arch = _LEGACY_MANYLINUX[legacy.group(1)], legacy.group(2)
    else:
      out.append(p)
      continue
    out += [f"manylinux_{major}_{y}_{arch}" for y in range(minor, 4, -1)]
    out += [f"{name}_{arch}" for name, (_, y) in _LEGACY_MANYLINUX.items() if y <= minor]
  return list(dict.fromkeys(out))


def target_args(python_version, platforms, implementation="cp"):
  args = ["--only-binary=:all:", f"--python-version={python_version}", f"--implementation={implementation}"]
  return args + [f"--platform={p}" for p in expand_platforms(platforms)]


def _pip(args, what):
  cmd = [sys.executable, "-m", "pip", *args]
  print("+ " + shlex.join(cmd), flush=True)
  proc = subprocess.run(cmd)
  if proc.returncode:
    raise WheelhouseError(f"{what} failed (pip exit status {proc.returncode}); see pip's output above")


def wheel_name_version(filename):
  """(canonical project name, version) of a wheel file name."""
  name, version = pathlib.Path(filename).name.split("-")[:2]
  return canonical(name), version


# Dependencies published only as source archives; pure Python, so a wheel built here installs anywhere.
# (tensorflow-datasets needs promise.) pip cannot resolve for another platform without wheels.
SDIST_ONLY = ("promise",)


def download(dest, python_version, platforms, skips=(), extras=(), build_own=True, sdist_only=SDIST_ONLY):
  """Fill ``dest`` with the wheels of our dependencies for the target, less ``skips``; returns
  (the resolved [(name, version)] downloaded, the names left out)."""
  names, pins = parse_skip(skips)
  dest = pathlib.Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  if sdist_only:
    _pip(["wheel", "--no-deps", "--wheel-dir", str(dest), *sdist_only], "building the pure-Python wheels")
  target = target_args(python_version, platforms) + [f"--find-links={dest}"]
  reqs = [r for r in requirements(extras) if canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) not in names]
  # pip download resolves for the target Python (pip install --dry-run checks Requires-Python against the
  # running interpreter instead).  The left-out packages are downloaded with the rest, so that the
  # resolution is the node's, then deleted.
  with tempfile.TemporaryDirectory(dir=dest) as staging:
    _pip(["download", "--dest", staging] + target + reqs + pins, "resolving and downloading the wheels")
    resolved, keep, left_out = {}, [], set()
    for whl in sorted(pathlib.Path(staging).glob("*.whl")):
      name, version = wheel_name_version(whl.name)
      resolved[name] = version
      if name in names:
        left_out.add(name)
      else:
        keep.append((name, version))
        os.replace(whl, dest / whl.name)
  (dest / "resolution.json").write_text(json.dumps(resolved, indent=1, sort_keys=True))
  if build_own:
    _pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(REPO)], "building dxmi-jax")
  return keep, sorted(left_out)


def resolved_versions(dest, names):
  """[(name, version)] that the resolution in ``dest`` chose for ``names`` (the left-out packages)."""
  found = json.loads((pathlib.Path(dest) / "resolution.json").read_text())
  return [(n, found[n]) for n in names if n in found]


def install_command(wheelhouse, extras=(), python=sys.executable):
  spec = NAME + (f"[{','.join(extras)}]" if extras else "")
  return [python, "-m", "pip", "install", "--no-index", f"--find-links={wheelhouse}", spec]


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m dxmi_jax.wheelhouse", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  d = sub.add_parser("download", help="on a machine with internet: fill a wheelhouse for the target")
  d.add_argument("--dest", required=True, help="folder for the wheels (created)")
  d.add_argument("--python-version", default="3.12", help="the node's Python, e.g. 3.12")
  d.add_argument(
    "--platform",
    action="append",
    default=None,
    help="the node's platform tag(s), e.g. manylinux_2_28_x86_64 (repeatable; older manylinux tags are implied)",
  )
  d.add_argument("--skip", action="append", default=[], help="NAME or NAME==VERSION the node already has")
  d.add_argument("--extras", default="", help="comma-separated extras of dxmi-jax, e.g. test")
  i = sub.add_parser("install", help="on the node: install dxmi-jax from the wheelhouse, offline")
  i.add_argument("--from", dest="src", required=True, help="the wheelhouse folder")
  i.add_argument("--extras", default="", help="comma-separated extras of dxmi-jax, e.g. test")
  args = p.parse_args(argv)
  extras = [e for e in args.extras.split(",") if e]
  try:
    if args.cmd == "download":
      if not re.fullmatch(r"3\.\d+", args.python_version):
        raise WheelhouseError(f"--python-version: expected MAJOR.MINOR such as 3.12, got {args.python_version!r}")
      platforms = args.platform or ["manylinux_2_28_x86_64"]
      keep, left_out = download(args.dest, args.python_version, platforms, args.skip, extras)
      size = sum(f.stat().st_size for f in pathlib.Path(args.dest).glob("*.whl"))
      print(
        f"{len(keep)} wheels + dxmi-jax in {args.dest}: {size / 2**20:.1f} MiB; left out: {', '.join(left_out) or '-'}"
      )
      pinned = {canonical(p.split("==")[0]) for p in parse_skip(args.skip)[1]}
      for name, version in resolved_versions(args.dest, left_out):
        if name not in pinned:
          print(
            f"note: resolved against {name}=={version}; the node needs it, or pass --skip={name}==THE_NODES_VERSION"
          )
      print("on the node: " + shlex.join(install_command(args.dest, extras, "python")))
    else:
      if not os.path.isdir(args.src):
        raise WheelhouseError(f"--from: {args.src!r} is not a folder")
      cmd = install_command(args.src, extras)
      print("+ " + shlex.join(cmd), flush=True)
      return subprocess.run(cmd).returncode
  except WheelhouseError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
