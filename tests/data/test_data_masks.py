"""Random inpainting masks and the inpainting conditioning inputs."""

from __future__ import annotations

import pytest
import torch

from glidekit.data.masks import (
    add_inpaint,
    make_inpaint_example,
    random_box_mask,
    random_brush_mask,
    random_mask,
)


@pytest.mark.parametrize("size", [32, 64])
def test_masks_values_and_bounds(size: int) -> None:
    g = torch.Generator().manual_seed(0)
    fills = []
    for _ in range(100):
        m = random_mask(size, g)
        assert m.shape == (1, size, size) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        fills.append(1 - float(m.mean()))
    fills_t = torch.tensor(fills)
    assert fills_t.min() > 0.0 and fills_t.max() < 1.0
    assert 0.9 <= float(((fills_t >= 0.05) & (fills_t <= 0.75)).float().mean())
    assert 0.1 < float(fills_t.mean()) < 0.6


def test_both_kinds_appear_and_differ() -> None:
    g = torch.Generator().manual_seed(1)
    box = random_box_mask(64, g)
    brush = random_brush_mask(64, g)
    assert (box == 0).any() and (brush == 0).any()

    # rows through <= 3 boxes take at most 6 distinct patterns; brush strokes give many more
    def n_row_patterns(m: torch.Tensor) -> int:
        rows = {tuple(r.tolist()) for r in m[0] if (r == 0).any()}
        return len(rows)

    box_patterns = [n_row_patterns(random_box_mask(64, g)) for _ in range(20)]
    brush_patterns = [n_row_patterns(random_brush_mask(64, g)) for _ in range(20)]
    assert max(box_patterns) <= 6  # at most 3 boxes -> at most 2*3 boundaries
    assert min(brush_patterns) > 6
    # "mixed" draws both kinds
    kinds = set()
    for _ in range(30):
        kinds.add("box" if n_row_patterns(random_mask(64, g)) <= 6 else "brush")
    assert kinds == {"box", "brush"}


def test_masks_seeded() -> None:
    a = [random_mask(48, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    b = random_mask(48, torch.Generator().manual_seed(8))
    assert not torch.equal(a[0], b)
    for kind in ("box", "brush"):
        x = random_mask(32, torch.Generator().manual_seed(3), kind=kind)  # type: ignore[arg-type]
        y = random_mask(32, torch.Generator().manual_seed(3), kind=kind)  # type: ignore[arg-type]
        assert torch.equal(x, y)


def test_make_inpaint_example() -> None:
    image = torch.rand(3, 16, 16) * 2 - 1
    mask = random_mask(16, torch.Generator().manual_seed(0))
    out = make_inpaint_example(image, mask)
    assert out["inpaint_mask"].shape == (1, 16, 16)
    assert torch.equal(out["inpaint_image"], image * mask)
    assert (out["inpaint_image"][:, mask[0] == 0] == 0).all()
    batch = make_inpaint_example(image[None].repeat(2, 1, 1, 1), mask)
    assert batch["inpaint_image"].shape == (2, 3, 16, 16)
    assert batch["inpaint_mask"].shape == (2, 1, 16, 16)
    sample = add_inpaint({"image": image, "caption": "x"}, torch.Generator().manual_seed(0))
    assert set(sample) == {"image", "caption", "inpaint_image", "inpaint_mask"}
    with pytest.raises(ValueError, match="mask"):
        make_inpaint_example(image, torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="kind"):
        random_mask(16, kind="circle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        random_box_mask(2)
