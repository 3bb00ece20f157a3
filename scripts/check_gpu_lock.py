"""`make check-gpu-lock`: the GPU lock still resolves against the registry, and is whole.

A dry run of what `make setup GPU=1` installs (``pip install -c constraints.txt -c constraints-gpu.txt
-e '.[gpu,test]'``; nothing is installed, ``--ignore-installed``: the registry's CUDA torch, not this
machine's CPU build), then three checks on pip's report:

- it resolves at all (pip's ResolutionImpossible fails the check with pip's own message);
- every package it would install is pinned, at that version, by one of the two files (a new
  dependency of a bumped pin shows up here, not on a user's GPU machine);
- no package is pinned in both files (one version per package: the product runs on the versions of
  both locks).

Run by ``.ci/run``; a registry lookup, so it needs the network the set-up needs (about 30 s).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ("constraints.txt", "constraints-gpu.txt")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file's ``name==version`` lines."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonical(name)] = version.strip()
    return found


def resolve() -> list[dict]:
    """pip's dry-run report of the GPU set-up: the packages it would install."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        command = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(report), *(arg for lock in LOCKS for arg in ("-c", lock)), "-e", ".[gpu,test]"]
        subprocess.run(command, cwd=ROOT, check=True)
        return json.loads(report.read_text())["install"]


def main() -> int:
    base, gpu = (pins(ROOT / lock) for lock in LOCKS)
    problems = [f"{name} is pinned in both locks ({base[name]}, {gpu[name]})" for name in sorted(base.keys() & gpu.keys())]
    pinned = base | gpu
    try:
        installs = resolve()
    except subprocess.CalledProcessError:
        print("[check-gpu-lock] pip cannot resolve the GPU set-up with these locks (its message is above)", file=sys.stderr)
        return 1
    for item in installs:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        if name == "reinflow":
            continue
        if name not in pinned:
            problems.append(f"{name}=={version} would be installed but neither lock pins it")
        elif version.split("+")[0] != pinned[name]:
            problems.append(f"{name}=={version} would be installed but the locks pin {pinned[name]}")
    for problem in problems:
        print(f"[check-gpu-lock] {problem}", file=sys.stderr)
    if not problems:
        versions = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
        shown = ", ".join(f"{n} {versions[n]}" for n in ("vllm", "torch", "transformers", "prefect", "numpy"))
        print(f"[check-gpu-lock] the GPU lock resolves: {len(installs)} packages, all pinned ({shown})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
