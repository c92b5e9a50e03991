"""Release check of one package: what `make release PKG=ista-nas` runs. It bumps nothing.

    python tools/release.py ista-nas              # build, twine check, install in a fresh venv, run its tests
    python tools/release.py dependents nas-common # the packages whose tests a change to nas-common re-runs

1. The package's CHANGELOG.md must have an entry (a `## ...` heading) naming the version in its
   pyproject.toml.
2. `poetry build` makes its sdist and wheel; `twine check` checks their metadata (when twine is
   installed: `make setup` installs it).
3. A fresh virtual environment gets the wheel and, for a method package, the nas-common wheel at the
   *lowest* version its `nas-common` range allows: the first commit of packages/nas-common/pyproject.toml
   that carries that version (or a `nas-common-vX.Y.Z` tag) is built from git. Third-party dependencies
   come from the development venv (only the declared dependencies and pytest, linked in) unless
   `--deps index` installs them from the package index; `pip install --no-index` then fails on a
   dependency the wheels do not declare.
4. The package's tests (not `slow`) run there, outside the source tree's import path.

Exit status 0 when every step passed; the failing step is named otherwise.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ROOT / "packages"
CORE = "nas-common"


class ReleaseError(Exception):
    """A step of the release check failed (the message names it)."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_dirs() -> dict[str, Path]:
    """distribution name -> its directory under packages/."""
    out = {}
    for d in sorted(PACKAGES.iterdir()):
        if (d / "pyproject.toml").is_file():
            out[_norm(tomllib.loads((d / "pyproject.toml").read_text())["project"]["name"])] = d
    return out


def find_package(name: str) -> tuple[str, Path]:
    dirs = package_dirs()
    by_dir = {d.name: n for n, d in dirs.items()}
    key = _norm(name)
    if key in dirs:
        return key, dirs[key]
    if name in by_dir:
        return by_dir[name], dirs[by_dir[name]]
    raise ReleaseError(f"unknown package {name!r}: one of {', '.join(sorted(dirs))}")


def requirements(pkg_dir: Path) -> list[str]:
    return list(tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"].get("dependencies", []))


def dependents(name: str) -> list[str]:
    """`name` and every package that depends on it, directly or not (a change to nas-common re-runs
    every method package's tests), from the packages' pyproject.toml dependencies."""
    from packaging.requirements import Requirement

    graph = {n: {_norm(Requirement(r).name) for r in requirements(d)} for n, d in package_dirs().items()}
    out, todo = [_norm(name)], [_norm(name)]
    while todo:
        cur = todo.pop()
        for n, deps in graph.items():
            if cur in deps and n not in out:
                out.append(n)
                todo.append(n)
    return out


def check_changelog(pkg_dir: Path, version: str) -> str:
    """The CHANGELOG heading that names `version` (`## 0.2.0`, `## [0.2.0] - date`, `## Unreleased (0.2.0)`)."""
    f = pkg_dir / "CHANGELOG.md"
    if not f.is_file():
        raise ReleaseError(f"{f.relative_to(ROOT)} does not exist: a release needs a CHANGELOG entry for {version}")
    pat = re.compile(rf"^##\s.*(?<![\w.]){re.escape(version)}(?![\w.])")
    for line in f.read_text().splitlines():
        if pat.search(line):
            return line.strip()
    raise ReleaseError(f"{f.relative_to(ROOT)} has no entry for version {version}: add a `## {version}` section "
                       f"(what changed) before releasing")


def _run(cmd: list[str], what: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 3600) -> str:
    print(f"$ {' '.join(map(str, cmd))}", flush=True)
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        tail = (p.stdout[-3000:] + "\n" + p.stderr[-3000:]).strip()
        raise ReleaseError(f"{what} failed (exit {p.returncode}):\n{tail}")
    return p.stdout


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def build(pkg_dir: Path, out: Path, formats: tuple[str, ...] = ("sdist", "wheel")) -> list[Path]:
    poetry = _tool("poetry")
    if poetry is None:
        raise ReleaseError("poetry is not installed (make setup installs it)")
    before = set(out.glob("*")) if out.exists() else set()
    for fmt in formats:
        _run([poetry, "build", "-q", "-f", fmt, "-o", str(out)], f"poetry build -f {fmt} ({pkg_dir.name})", cwd=pkg_dir)
    return sorted(set(out.glob("*")) - before)


def twine_check(files: list[Path]) -> bool:
    try:
        import twine  # noqa: F401
    except ImportError:
        print("twine is not installed: `twine check` skipped (make setup installs it)")
        return False
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], "twine check")
    return True


def wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]


def core_versions() -> list[tuple[str, str]]:
    """(version, commit) of every nas-common version: a `nas-common-vX.Y.Z` tag, else the first commit of
    packages/nas-common/pyproject.toml that carries it; oldest first."""
    rel = "packages/nas-common/pyproject.toml"
    found: dict[str, str] = {}
    tags = _run(["git", "tag", "--list", "nas-common-v*"], "git tag", cwd=ROOT).split()
    for t in tags:
        found[t.removeprefix("nas-common-v")] = t
    log = _run(["git", "log", "--reverse", "--format=%H", "--", rel], "git log", cwd=ROOT).split()
    for commit in log:
        try:
            text = _run(["git", "show", f"{commit}:{rel}"], "git show", cwd=ROOT)
        except ReleaseError:
            continue
        v = tomllib.loads(text)["project"]["version"]
        found.setdefault(v, commit)
    from packaging.version import Version

    return sorted(found.items(), key=lambda kv: Version(kv[0]))


def lowest_core(spec: str) -> tuple[str, str]:
    """(version, commit or tag) of the lowest nas-common version that `spec` (">=0.2,<0.3") allows."""
    from packaging.specifiers import SpecifierSet

    allowed = SpecifierSet(spec)
    for version, ref in core_versions():
        if version in allowed:
            return version, ref
    raise ReleaseError(f"no nas-common version in this repository's history satisfies {spec!r}")


def build_core_at(ref: str, out: Path, work: Path) -> Path:
    """The nas-common wheel of commit/tag `ref`, built from `git archive`."""
    src = work / f"nas-common-{ref[:12]}"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "packages/nas-common"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise ReleaseError(f"git archive {ref} failed: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    wheels = [w for w in build(src / "packages" / "nas-common", out, ("wheel",)) if w.suffix == ".whl"]
    if not wheels:
        raise ReleaseError(f"poetry built no nas-common wheel at {ref}")
    return wheels[0]


def dependency_closure(reqs: list[str], skip: set[str]) -> list[metadata.Distribution]:
    """The development environment's distributions that `reqs` need, recursively (markers evaluated,
    extras followed: `cuda-toolkit[cublas]` brings what its `cublas` extra requires), leaving out
    `skip` (this repository's packages)."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(r, "") for r in reqs]
    while todo:
        text, extra = todo.pop()
        r = Requirement(text)
        key = _norm(r.name)
        if key in skip or (r.marker is not None and not r.marker.evaluate({"extra": extra})):
            continue
        if key not in seen:
            try:
                seen[key] = metadata.distribution(r.name)
            except metadata.PackageNotFoundError:
                raise ReleaseError(f"{r.name} is not installed in the development environment: run with "
                                   f"--deps index to install it from the package index") from None
        for e in ("", *sorted(r.extras)):
            if (key, e) not in done:
                done.add((key, e))
                todo += [(q, e) for q in seen[key].requires or []]
    return list(seen.values())


def link_distributions(dists: list[metadata.Distribution], shim: Path) -> None:
    """Make `dists` importable from `shim` by symlinking their top-level files and metadata."""
    shim.mkdir(parents=True, exist_ok=True)
    for d in dists:
        base = Path(d.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in (d.files or []) if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, shim / top
            if src.exists() and not dst.exists() and not top.endswith(".pth"):
                dst.symlink_to(src)


def fresh_venv(where: Path, wheels: list[Path], deps: str) -> Path:
    """A venv at `where` holding `wheels`; returns its python."""
    _run([sys.executable, "-m", "venv", str(where)], "python -m venv")
    py = where / "bin" / "python"
    if deps == "index":
        _run([py, "-m", "pip", "install", "-q", *map(str, wheels), "pytest"], "pip install (index)", timeout=7200)
        return py
    reqs = [r for w in wheels for r in wheel_requirements(w)] + ["pytest"]
    dists = dependency_closure(reqs, skip=set(package_dirs()))
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], "venv site").strip())
    shim = where / "dev-deps"
    link_distributions(dists, shim)
    bundled = [d.metadata["Name"] for d in dists if _norm(d.metadata["Name"]) in ("setuptools", "wheel")]
    if bundled:  # the venv's own copies come first on sys.path and may be older than what is required
        _run([py, "-m", "pip", "uninstall", "-q", "-y", *bundled], "pip uninstall (the venv's bundled copies)")
    (site / "_release_dev_deps.pth").write_text(str(shim) + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-index", *map(str, wheels)],
         "pip install --no-index (a dependency the wheels need is not declared, or not installed)")
    return py


def release(name: str, *, deps: str = "dev", keep: bool = False, run_tests: bool = True,
            core: str = "lowest") -> int:
    dist, pkg_dir = find_package(name)
    project = tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"]
    version = project["version"]
    print(f"== release check of {dist} {version} ({pkg_dir.relative_to(ROOT)})")
    print(f"changelog: {check_changelog(pkg_dir, version)}")
    work = Path(tempfile.mkdtemp(prefix=f"release-{dist}-"))
    try:
        dist_dir = work / "dist"
        files = build(pkg_dir, dist_dir)
        print("built: " + ", ".join(f.name for f in files))
        twine_check(files)
        wheels = [f for f in files if f.suffix == ".whl"]
        core_req = next((r for r in wheel_requirements(wheels[0]) if _norm(re.split(r"[\s<>=!~;(\[]", r)[0]) == CORE),
                        None)
        if dist != CORE and core_req is not None:
            from packaging.requirements import Requirement

            spec = str(Requirement(core_req).specifier)
            if core == "head":
                print(f"nas-common: the working tree's, for {core_req}")
                wheels.append(next(w for w in build(PACKAGES / "nas-common", work / "core", ("wheel",))
                                   if w.suffix == ".whl"))
            else:
                cv, ref = lowest_core(spec)
                print(f"nas-common: {cv}, the lowest version {spec!r} allows (built from {ref[:12]})")
                wheels.append(build_core_at(ref, work / "core", work))
        py = fresh_venv(work / "venv", wheels, deps)
        where = _run([py, "-c", f"import {project['name'].replace('-', '_')} as m, nas_common as c; "
                                f"print(m.__file__); print(c.__version__)"], "import check", cwd=work)
        print("installed: " + " | ".join(where.split()))
        if run_tests:
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env.setdefault("OMP_NUM_THREADS", "1")
            out = _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                        str(pkg_dir / "tests")], f"the tests of {dist} in the fresh environment", cwd=ROOT, env=env)
            print(out.strip().splitlines()[-1] if out.strip() else "(no output)")
        print(f"== {dist} {version}: release check passed; artifacts in {dist_dir if keep else '(removed)'}")
        return 0
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dependents"]:
        if len(argv) != 2:
            print("usage: release.py dependents PKG", file=sys.stderr)
            return 2
        try:
            print(" ".join(str(package_dirs()[n].relative_to(ROOT)) for n in dependents(find_package(argv[1])[0])))
        except ReleaseError as e:
            print(f"release: error: {e}", file=sys.stderr)
            return 2
        return 0
    ap = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="a distribution (ista-nas) or a folder under packages/ (ista-nas, nat)")
    ap.add_argument("--deps", choices=("dev", "index"), default="dev",
                    help="third-party dependencies from the development venv (default, offline) or the package index")
    ap.add_argument("--nas-common", dest="core", choices=("lowest", "head"), default="lowest",
                    help="the nas-common a method package is tested with: the lowest its range allows (default) "
                         "or the working tree's")
    ap.add_argument("--no-tests", action="store_true", help="build, check and install only")
    ap.add_argument("--keep", action="store_true", help="keep the build folder (the sdist and wheel)")
    args = ap.parse_args(argv)
    try:
        return release(args.package, deps=args.deps, keep=args.keep, run_tests=not args.no_tests, core=args.core)
    except ReleaseError as e:
        print(f"release: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
