"""Does the caption steer a model's x0 prediction at high noise? (the colour probe)

    python benchmarks/probe_caption.py MODEL.safetensors [--n 32] [--seed 123]

For n canonical shapes-world scenes, noised to t with fixed noise, prints the MSE of the model's
predicted x0 (clipped, as the samplers see it) against the clean image with the right caption,
with the colour words swapped for other colours, and with no caption. If the three agree at
t >= 950, the caption does not reach the levels where colour is decided.
"""

from __future__ import annotations

import argparse
import random

import torch

from glidekit.checkpoints.modelfile import load_unet as load_model
from glidekit.data.shapes import PALETTE, ShapesDataset
from glidekit.diffusion import create_diffusion
from glidekit.tokenizer import tokenize_batch

STEPS = (700, 850, 900, 950, 975, 990)


def swap_colours(caption: str, rng: random.Random) -> str:
    colours = list(PALETTE)
    return " ".join(
        rng.choice([c for c in colours if c != w]) if w in colours else w for w in caption.split()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    model, dc, tokenizer = load_model(args.model)
    diffusion = create_diffusion(dc)
    size = model.config.image_size
    data = ShapesDataset(length=args.n, image_size=size, seed=args.seed, canonical=True)
    items = [data[i] for i in range(args.n)]
    x0 = torch.stack([item["image"] for item in items])
    right = [item["caption"] for item in items]
    rng = random.Random(0)
    captions = {"right": right, "swapped": [swap_colours(c, rng) for c in right]}
    captions["empty"] = [""] * args.n
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    print(f"{args.model} ({dc.prediction}): x0 MSE with the right / colour-swapped / no caption")
    for step in STEPS:
        t = torch.full((args.n,), step)
        x_t = diffusion.q_sample(x0, t, noise)
        row = []
        for texts in captions.values():
            tokens, mask = tokenize_batch(tokenizer, texts, model.config.text_ctx)
            with torch.no_grad():
                out = diffusion.p_mean_variance(
                    model, x_t, t, model_kwargs={"tokens": tokens, "mask": mask}
                )
            row.append(float(((out.pred_xstart - x0) ** 2).mean()))
        print(f"t={step}: " + " / ".join(f"{v:.4f}" for v in row))


if __name__ == "__main__":
    main()
