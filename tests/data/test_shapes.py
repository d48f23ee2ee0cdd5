"""The shapes world: generator, captions, parser, judge, tokenizer, datasets."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import glidekit.tokenizer as tokenizers
from glidekit.data.shapes import (
    ATTRIBUTES,
    COLORS,
    PALETTE,
    POSITIONS,
    QUADRANTS,
    SHAPES,
    SHAPES_WORDS,
    SIZES,
    UNKNOWN,
    ShapeScene,
    ShapesDataset,
    ShapesIterableDataset,
    ShapesTokenizer,
    canonical_caption,
    caption,
    check,
    generate,
    inpaint_scene,
    judge,
    parse_caption,
    quadrant_box,
    random_scene,
    render,
)
from glidekit.data.transforms import to_tensor
from glidekit.tokenizer import Tokenizer, tokenize_batch


def _accuracy(image_size: int, n: int, seed: int) -> dict[str, float]:
    wrong = dict.fromkeys(ATTRIBUTES, 0)
    for i in range(n):
        img, scene = generate(random.Random(f"{seed}-{i}"), image_size)
        seen = judge(img)
        for a in ATTRIBUTES:
            wrong[a] += getattr(seen, a) != getattr(scene, a)
    return {a: 1 - w / n for a, w in wrong.items()}


@pytest.mark.parametrize("image_size", [64, 32])
def test_judge_recovers_generated_scenes(image_size: int) -> None:
    acc = _accuracy(image_size, 500, seed=image_size)
    assert min(acc.values()) >= 0.99, acc


def test_judge_large_images_and_inputs() -> None:
    assert min(_accuracy(256, 8, seed=3).values()) == 1.0
    img, scene = generate(random.Random(5), 48)
    arr = np.asarray(img)
    assert judge(arr) == scene
    assert judge(to_tensor(img)) == scene
    est = judge(img)
    assert abs(est.cx - scene.cx) < 0.03 and abs(est.cy - scene.cy) < 0.03
    assert abs(est.side - scene.side) < 0.03
    blank = np.zeros((32, 32, 3), np.uint8) + np.array(PALETTE["blue"], np.uint8)
    empty = judge(blank)
    assert empty.background == "blue" and empty.shape == UNKNOWN
    with pytest.raises(ValueError, match="square"):
        judge(np.zeros((32, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="image"):
        judge([[0, 0, 0]])


def test_generator_is_seeded_and_covers_the_world() -> None:
    a_img, a = generate(random.Random(11), 32)
    b_img, b = generate(random.Random(11), 32)
    assert a == b and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    scenes = [random_scene(random.Random(i)) for i in range(400)]
    assert all(s.color != s.background for s in scenes)
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.size for s in scenes} == set(SIZES)
    assert {s.position for s in scenes} == set(POSITIONS)
    assert {s.color for s in scenes} == set(COLORS) == {s.background for s in scenes}
    for s in scenes:  # the object stays inside the image
        assert s.side / 2 <= min(s.cx, s.cy, 1 - s.cx, 1 - s.cy)
    fixed = random_scene(random.Random(0), shape="triangle", color="red", background="white")
    assert (fixed.shape, fixed.color, fixed.background) == ("triangle", "red", "white")
    img = np.asarray(render(fixed, 64))
    assert img.shape == (64, 64, 3)
    # anti-aliased: some pixels are neither the object nor the background colour
    flat = img.reshape(-1, 3)
    pure = (flat == PALETTE["red"]).all(1) | (flat == PALETTE["white"]).all(1)
    assert 0 < (~pure).sum() < 0.2 * len(flat)
    with pytest.raises(ValueError, match="color"):
        ShapeScene("circle", "red", "small", "center", "red").validate()
    with pytest.raises(ValueError, match="shape"):
        random_scene(random.Random(0), shape="hexagon")


def test_captions_and_parser() -> None:
    scene = ShapeScene("circle", "red", "small", "center", "white")
    assert canonical_caption(scene) == "a small red circle at the center on a white background"
    tl = ShapeScene("triangle", "blue", "large", "top left", "black")
    assert canonical_caption(tl) == "a large blue triangle in the top left on a black background"
    assert parse_caption(canonical_caption(tl)) == tl.attributes()
    assert caption(tl, random.Random(0), drop_prob=0, vary_order_prob=0) == canonical_caption(tl)
    assert parse_caption("a red circle, small, top left, white background") == {
        "size": "small",
        "color": "red",
        "shape": "circle",
        "position": "top left",
        "background": "white",
    }
    assert parse_caption("White background: a big orange square in the middle") == {
        "size": "large",
        "color": "orange",
        "shape": "square",
        "position": "center",
        "background": "white",
    }
    assert parse_caption("a shape") == {}
    assert parse_caption("") == {}

    rng = random.Random(0)
    varied = dropped = 0
    for i in range(400):
        s = random_scene(random.Random(i))
        text = caption(s, rng)
        stated = parse_caption(text)
        # whatever the caption states is true of the scene
        assert all(getattr(s, a) == v for a, v in stated.items()), (text, s)
        dropped += len(stated) < 5
        varied += "," in text
        # with no drops, every attribute is recoverable from any order
        full = caption(s, rng, drop_prob=0.0, vary_order_prob=1.0)
        assert parse_caption(full) == s.attributes(), full
    assert 0.5 < dropped / 400 < 0.9  # 1 - 0.75**5 = 0.76
    assert 0.15 < varied / 400 < 0.45


def test_check_flags_wrong_captions() -> None:
    img, scene = generate(random.Random(2), 64)
    assert all(check(img, canonical_caption(scene)).values())
    other_shape = next(s for s in SHAPES if s != scene.shape)
    wrong = canonical_caption(
        ShapeScene(other_shape, scene.color, scene.size, scene.position, scene.background)
    )
    result = check(img, wrong)
    assert result["shape"] is False and all(v for a, v in result.items() if a != "shape")
    assert check(img, f"a {scene.color} shape") == {"color": True}
    assert check(img, "hello") == {}


def test_tokenizer() -> None:
    tok = ShapesTokenizer()
    assert isinstance(tok, Tokenizer)
    tokens, mask = tokenize_batch(tok, ["a red circle", ""], tok.text_ctx)
    assert tokens.shape == mask.shape == (2, tok.text_ctx) and int(mask.sum()) == 3
    with pytest.raises(TypeError):
        tok.encode(None)  # type: ignore[arg-type]
    assert tok.n_vocab == len(SHAPES_WORDS) + 2
    for w in SHAPES_WORDS:
        assert tok.encode(w) == [SHAPES_WORDS.index(w)]
    text = "a red circle, small, top left, white background"
    ids = tok.encode(text.upper())
    assert tok.decode(ids) == text and tok.unk_token not in ids
    assert tok.encode("a fuchsia circle")[1] == tok.unk_token
    for i in range(200):  # every training caption is in-vocabulary and fits the context
        s = random_scene(random.Random(i))
        ids = tok.encode(caption(s, random.Random(i)))
        assert tok.unk_token not in ids and len(ids) <= tok.text_ctx
    padded, mask = tok.padded_tokens_and_mask(tok.encode("a red circle"))
    assert len(padded) == len(mask) == tok.text_ctx
    assert padded[3:] == [tok.end_token] * (tok.text_ctx - 3) and mask == [True] * 3 + [False] * (
        tok.text_ctx - 3
    )
    short, short_mask = tok.padded_tokens_and_mask(tok.encode(text), text_ctx=4)
    assert short == tok.encode(text)[:4] and all(short_mask)
    again = ShapesTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok and again.encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="to_dict"):
        ShapesTokenizer.from_dict({"kind": "gpt2"})
    with pytest.raises(ValueError, match="unique"):
        ShapesTokenizer(["a", "a"])


def test_tokenizer_vocabulary_is_the_worlds_words() -> None:
    """The tokenizer layer spells the world's words out; they must stay the world's words."""
    positions = ("top", "bottom", "left", "right", "center")
    assert set(positions) == {w for p in POSITIONS for w in p.split()}
    fillers = ("a", "in", "the", "at", "on", "background", "shape")
    punctuation = (",", ".", ":", ";", "-")
    assert SHAPES_WORDS == fillers + SIZES + COLORS + SHAPES + positions + punctuation
    assert ShapesTokenizer is tokenizers.ShapesTokenizer
    for i in range(50):  # every caption word is in the vocabulary
        words = canonical_caption(random_scene(random.Random(i))).split()
        assert set(words) <= set(SHAPES_WORDS)


def test_shapes_datasets() -> None:
    ds = ShapesDataset(length=10, image_size=32, seed=1, include_scene=True)
    item = ds[3]
    assert (
        item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() <= item["image"].max() <= 1
    )
    assert isinstance(item["caption"], str) and item["caption"]
    assert torch.equal(ds[3]["image"], item["image"]) and ds[3]["caption"] == item["caption"]
    assert judge(item["image"]).attributes() == item["scene"]
    canon = ShapesDataset(length=10, image_size=32, seed=1, canonical=True)
    assert parse_caption(canon[3]["caption"]) == item["scene"]
    captions0 = [ds[i]["caption"] for i in range(10)]
    ds.set_epoch(1)
    assert [ds[i]["caption"] for i in range(10)] != captions0
    with pytest.raises(IndexError):
        ds[10]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4

    stream = ShapesIterableDataset(image_size=16, seed=0, samples_per_epoch=10)
    items = list(DataLoader(stream, batch_size=None, num_workers=2))
    assert len(items) == 10
    images = torch.stack([it["image"] for it in items])
    assert len({tuple(im.flatten().tolist()) for im in images}) > 5  # workers differ
    infinite = iter(ShapesIterableDataset(image_size=16, seed=0))
    assert all(next(infinite)["image"].shape == (3, 16, 16) for _ in range(5))


def test_inpaint_scene_puts_the_target_in_its_quadrant_and_the_distractor_elsewhere():
    size = 32
    for i in range(40):
        image, target, box = inpaint_scene(random.Random(i), size, distractor_prob=0.5)
        assert target.position in QUADRANTS and box == quadrant_box(target.position, size)
        canvas = Image.new("RGB", (size, size), PALETTE[target.background])
        canvas.paste(image.crop(box), box)
        assert check(canvas, canonical_caption(target)) == dict.fromkeys(
            ("size", "color", "shape", "position", "background"), True
        )
        outside = np.asarray(image).copy()
        outside[box[1] : box[3], box[0] : box[2]] = PALETTE[target.background]
        has_other = (outside != PALETTE[target.background]).any()
        if has_other:  # the distractor: judged as an object in another quadrant
            other = judge(Image.fromarray(outside))
            assert other.position in QUADRANTS and other.position != target.position


def test_dataset_inpaint_items_carry_their_mask_and_plain_ones_are_unchanged():
    plain = ShapesDataset(20, 32, seed=4)
    same = ShapesDataset(20, 32, seed=4, inpaint_prob=0.0)
    assert all(torch.equal(plain[i]["image"], same[i]["image"]) for i in range(20))
    data = ShapesDataset(20, 32, seed=4, inpaint_prob=1.0, canonical=True)
    for i in range(20):
        item = data[i]
        keep = item["inpaint_keep"]
        assert keep.shape == (1, 32, 32) and keep.mean() == 0.75  # one quadrant to repaint
        hole = (keep[0] == 0).nonzero()
        y0, x0 = hole.min(0).values.tolist()
        pos = ("bottom" if y0 else "top") + " " + ("right" if x0 else "left")
        assert pos in item["caption"]  # the caption describes what is in the hole
    with pytest.raises(ValueError, match="inpaint_prob"):
        ShapesDataset(5, 32, inpaint_prob=2.0)
