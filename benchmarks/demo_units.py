"""CPU seconds of the demo's units of work, so a demo configuration can be costed on a shared machine.

    .venv/bin/python benchmarks/demo_units.py

Measured with the process's CPU clock (what one core does, whatever else runs on the machine):
one synthetic 800x600 smear (synth), detect + crop of one smear (ingest and infer), and one
ResNet-18 training sample (forward + backward + Adam step, batch 32, one torch thread) at input
sides 128, 96 and 64, with the machine's single-thread sgemm per CPU second to scale them to
another machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from demo_speed import sgemm_gflops

    from pipeline.config import CropSettings
    from pipeline.ingest import ingest_image
    from pipeline.io import encode_png, sha256_hex
    from pipeline.models import build_model
    from pipeline.sources import ImageTask
    from pipeline.synth import choose_blast_fraction, choose_patient_style, make_image_rng, make_smear

    torch.set_num_threads(1)
    wall, per_cpu = sgemm_gflops()
    print(f"sgemm, 1 thread: {per_cpu:.1f} GFLOP/s per CPU second ({wall:.1f} per wall second now)")
    c = time.process_time()
    smears = [
        make_smear(make_image_rng(1, p, 0), (800, 600), choose_blast_fraction(1, p), choose_patient_style(1, p))[0]
        for p in range(4)
    ]
    print(f"synth: {(time.process_time() - c) / 4:.2f} CPU s per 800x600 smear")
    settings = CropSettings()
    c = time.process_time()
    n_cells = 0
    for i, im in enumerate(smears):
        data = encode_png(im)
        n_cells += len(ingest_image(ImageTask("-", f"{i}.png", "P", "S"), data, settings, sha256_hex(data), "{}").cells)
    print(f"detect + crop: {(time.process_time() - c) / 4:.2f} CPU s per smear ({n_cells / 4:.1f} cells per smear)")
    for size in (128, 96, 64):
        model = build_model("resnet", image_size=size)
        opt = torch.optim.Adam(model.parameters())
        x, y = torch.randn(32, 3, size, size), torch.randint(0, 2, (32,)).float()
        for step in range(4):
            if step == 1:
                c = time.process_time()
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).reshape(-1), y)
            loss.backward()
            opt.step()
        per = (time.process_time() - c) / (3 * 32)
        print(f"resnet18 train at {size}px: {per * 1000:.1f} CPU ms per sample ({1 / per:.0f} samples per CPU s)")


if __name__ == "__main__":
    main()
