"""Which caption words reach the shapes models' pictures? (the position diagnosis of RESULTS.md)

    python benchmarks/probe_position.py [--base MODEL] [--clip CLIP] [--n 64]

Base model, with pure noise in at t = 999 (where only the caption can decide): how far the
predicted x0 moves (mean |difference|, 8 noises) when one attribute word of a caption changes,
and how far the pooled text token (the one added to the timestep embedding) moves. Ideal
predictor: the x0 MSE of the mean picture of a caption's scenes, knowing every attribute against
knowing all but the position (rendered, jitter included). CLIP: for ``--n`` rendered scenes,
how often the right position / colour word scores highest among the alternatives at t = 0, 300,
600, and how far moving a large object from the top left to the bottom right, or recolouring
it, moves the image embedding (16 scenes).
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np
import torch

from glidekit.checkpoints.modelfile import load_clip
from glidekit.checkpoints.modelfile import load_unet as load_model
from glidekit.data.shapes import COLORS, POSITIONS, canonical_caption, random_scene, render
from glidekit.diffusion import create_diffusion
from glidekit.tokenizer import tokenize_batch

MODELS = "glidekit/models/"
CAPTION = "a large red square in the top left on a white background"
SWAPS = {
    "position": ("top left", "bottom right"),
    "colour": ("red", "blue"),
    "background": ("white", "black"),
    "shape": ("square", "circle"),
    "size": ("large", "small"),
}


def picture(scene) -> torch.Tensor:
    """(1, 3, 32, 32) in [-1, 1]."""
    arr = np.asarray(render(scene, 32), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def base_words(path: str) -> None:
    model, dc, tok = load_model(path)
    model.float()
    diffusion = create_diffusion(dc)
    captions = [CAPTION] + [CAPTION.replace(a, b) for a, b in SWAPS.values()]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    preds = []
    with torch.no_grad():
        for caption in captions:
            tokens, mask = tokenize_batch(tok, [caption] * 8, model.config.text_ctx)
            out = diffusion.p_mean_variance(
                model, x, torch.full((8,), 999), model_kwargs={"tokens": tokens, "mask": mask}
            )
            preds.append(out.pred_xstart)
        tokens, mask = tokenize_batch(tok, captions, model.config.text_ctx)
        pooled = model.encode_text(tokens, mask).xf_proj
    print(f"base {path}: caption word changed -> |d x0| at t=999 / |d pooled text|")
    for i, name in enumerate(SWAPS, start=1):
        dx = float((preds[i] - preds[0]).abs().mean())
        print(f"  {name:10s} {dx:.4f} / {float((pooled[i] - pooled[0]).norm()):.3f}")


def ideal_predictor(seed: int = 0, scenes: int = 12, draws: int = 6) -> None:
    rng = random.Random(seed)
    full = blind = 0.0
    for _ in range(scenes):
        s = random_scene(rng)
        fixed = {"shape": s.shape, "size": s.size, "color": s.color, "background": s.background}
        means = {
            p: torch.cat([picture(random_scene(rng, position=p, **fixed)) for _ in range(12)]).mean(
                0
            )
            for p in POSITIONS
        }
        marginal = torch.stack(list(means.values())).mean(0)
        for _ in range(draws):
            scene = random_scene(rng, **fixed)
            x0 = picture(scene)[0]
            full += float(((x0 - means[scene.position]) ** 2).mean())
            blind += float(((x0 - marginal) ** 2).mean())
    n = scenes * draws
    print(f"ideal x0 MSE at t=999: every attribute known {full / n:.4f}, "
          f"all but the position {blind / n:.4f}")  # fmt: skip


def clip_words(path: str, n: int) -> None:
    clip = load_clip(path).float().eval()
    rng = random.Random(1)
    scenes = [random_scene(rng) for _ in range(n)]
    print(f"clip {path}: right word scores highest (of {n} scenes)")
    for attr, values in (("position", POSITIONS), ("color", COLORS)):
        row = []
        for t in (0, 300, 600):
            right = 0
            for s in scenes:
                options = [v for v in values if attr != "color" or v != s.background]
                captions = [canonical_caption(dataclasses.replace(s, **{attr: v})) for v in options]
                with torch.no_grad():
                    sims = clip.image_embeddings(picture(s), torch.tensor([t])) @ (
                        clip.text_embeddings(captions).T
                    )
                right += options[int(sims.argmax())] == getattr(s, attr)
            row.append(f"t={t}: {right / n:.2f}")
        print(f"  {attr:8s} " + ", ".join(row))
    moved = recoloured = 0.0
    rng = random.Random(0)
    for _ in range(16):  # a large object in the top left, moved to the bottom right / recoloured
        s = random_scene(rng, position="top left", size="large")
        other = next(c for c in ("red", "blue", "green") if c not in (s.color, s.background))
        away = {"position": "bottom right", "cx": 1 - s.cx, "cy": 1 - s.cy}
        variants = [s, dataclasses.replace(s, **away), dataclasses.replace(s, color=other)]
        with torch.no_grad():
            e = [clip.image_embeddings(picture(v), torch.tensor([0])) for v in variants]
        moved += float((e[1] - e[0]).norm()) / 16
        recoloured += float((e[2] - e[0]).norm()) / 16
    print(f"  image embedding moves {moved:.3f} (object moved) / {recoloured:.3f} (recoloured)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=MODELS + "shapes-base.safetensors")
    parser.add_argument("--clip", default=MODELS + "shapes-clip.safetensors")
    parser.add_argument("--n", type=int, default=64, help="CLIP probe scenes (64)")
    args = parser.parse_args()
    base_words(args.base)
    ideal_predictor()
    clip_words(args.clip, args.n)


if __name__ == "__main__":
    main()
