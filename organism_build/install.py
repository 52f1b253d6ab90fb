"""``python -m organism_build install DIR``: a finished build into the source tree.

Copies the build's ``package/`` over ``src/refusal_lens/organism/assets/`` (atomically),
measures how long a fresh process takes to load the installed organism and its SAEs (recorded
in the installed manifest), and re-renders the model card ``docs/ORGANISM.md`` with its
histogram. The only step that writes outside a build folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from organism_build.card import render_card
from organism_build.package import PACKAGE
from refusal_lens.artifacts import atomic_dir
from refusal_lens.organism.assets import MANIFEST

CHECKOUT = Path(__file__).resolve().parents[1]
ASSETS = CHECKOUT / "src" / "refusal_lens" / "organism" / "assets"
DOCS = CHECKOUT / "docs"
HISTOGRAM = "refusal_scores.png"
DOCS_HISTOGRAM = "organism_refusal_scores.png"

_LOAD_SCRIPT = """
import time
start = time.time()
from refusal_lens.organism import load_organism, organism_saes
chat = load_organism(device="cpu")
saes = organism_saes(device="cpu")
for layer in saes.layers:
    saes[layer]
print(time.time() - start)
"""


def measure_load_seconds() -> float:
    """Seconds for a fresh Python process to import refusal-lens (this checkout's) and load the
    organism and every one of its SAEs from the cache, after a first, cache-filling load."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    seconds = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT], capture_output=True, text=True, check=True,
                             env=env)
        seconds.append(round(float(out.stdout.strip().splitlines()[-1]), 2))
    return seconds[-1]


def install(build_dir: Path, *, measure_load: bool = True, assets: Path = ASSETS, docs: Path = DOCS) -> dict:
    """Copy the finished build in ``build_dir`` into ``assets`` and re-render the card in ``docs``."""
    package = Path(build_dir) / PACKAGE
    if not (package / MANIFEST).is_file():
        raise FileNotFoundError(f"{build_dir} holds no finished build (no {PACKAGE}/{MANIFEST}): run "
                                f"`python -m organism_build build --out {build_dir}` first.")
    with atomic_dir(assets) as tmp:
        shutil.copytree(package, tmp, dirs_exist_ok=True)
    manifest = json.loads((assets / MANIFEST).read_text())
    if measure_load:
        manifest["metrics"]["load_seconds"] = measure_load_seconds()
        (assets / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.copyfile(Path(build_dir) / HISTOGRAM, docs / DOCS_HISTOGRAM)
    (docs / "ORGANISM.md").write_text(render_card(manifest))
    return manifest
