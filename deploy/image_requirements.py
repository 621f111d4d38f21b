"""Print the requirements the graduate image installs: pyproject's dependencies plus the extras
named in $EXTRAS, without onnxruntime for VARIANT=gpu (onnxruntime-gpu replaces it). Run by
deploy/docker/lock.sh to make the GPU trainer image's lock; reads only pyproject.toml.
"""
from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path


def image_requirements(pyproject: Path, extras: str, variant: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in filter(None, (e.strip() for e in extras.split(","))):
        reqs += project["optional-dependencies"][extra]
    if variant == "gpu":
        reqs = [r for r in reqs if not r.startswith("onnxruntime==")]
    elif variant != "cpu":
        raise SystemExit(f"VARIANT must be cpu or gpu, not {variant!r}")
    return reqs


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pyproject.toml")
    print("\n".join(image_requirements(path, os.environ.get("EXTRAS", ""), os.environ.get("VARIANT", "cpu"))))
