"""Execute the latent-traversal notebooks in place (nbclient), refreshing their committed outputs from a run:

    python experiments/notebooks/run.py                      # runs/diffmvae_star (the default of each notebook)
    DIFFMVAE_CKPT=runs/x/checkpoints/last.ckpt python experiments/notebooks/run.py
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for path in sorted(HERE.glob("*.ipynb")) if len(sys.argv) < 2 else [Path(p) for p in sys.argv[1:]]:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, path)
        print(f"{path}: executed in {time.perf_counter() - start:.0f}s")
