"""Image loading/transforms and the image-folder dataset."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glidekit.data.folder import ImageFolderDataset
from glidekit.data.transforms import (
    add_low_res,
    image_to_tensor,
    load_image,
    make_low_res,
    resize_and_crop,
    to_pil,
    to_tensor,
)

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _half_red_blue(w: int, h: int) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = RED
    arr[:, w // 2 :] = BLUE
    return Image.fromarray(arr)


def _exif_rotated_jpeg(path: Path) -> None:
    """A 48x24 image stored with EXIF orientation 6 (display needs a 90 degree CW turn)."""
    img = _half_red_blue(48, 24)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    _half_red_blue(40, 30).save(root / "a_rgb.png")
    (root / "a_rgb.txt").write_text("  a red and\nblue  picture \n")
    _exif_rotated_jpeg(root / "b_exif.jpg")
    (root / "b_exif.txt").write_text("rotated")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent -> white
    rgba.save(root / "c_rgba.png")
    (root / "c_rgba.txt").write_text("transparent")
    Image.new("L", (16, 24), 100).save(root / "sub" / "d_gray.png")
    (root / "sub" / "d_gray.txt").write_text("gray")
    _half_red_blue(20, 20).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "e_pal.png")
    (root / "e_pal.txt").write_text("palette")
    Image.fromarray(np.full((20, 20), 32768, np.uint16)).save(root / "sub" / "f_16bit.png")
    (root / "sub" / "f_16bit.txt").write_text("sixteen")
    (root / "g_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "g_corrupt.txt").write_text("never seen")
    _half_red_blue(30, 30).save(root / "h_nocap.jpg", quality=95)  # no caption file
    (root / "notes.md").write_text("ignored")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    return root


def test_load_image_modes(image_folder: Path) -> None:
    img = load_image(image_folder / "b_exif.jpg")
    assert img.mode == "RGB" and img.size == (24, 48)  # transposed
    arr = np.asarray(img).astype(int)
    # rotating the red-left/blue-right image 90 degrees clockwise puts red on top
    assert arr[5, 12, 0] > 150 and arr[5, 12, 2] < 100
    assert arr[42, 12, 2] > 150 and arr[42, 12, 0] < 100

    white = np.asarray(load_image(image_folder / "c_rgba.png"))
    assert white.min() == 255
    gray = np.asarray(load_image(image_folder / "sub" / "d_gray.png"))
    assert gray.shape == (24, 16, 3) and (gray == 100).all()
    sixteen = np.asarray(load_image(image_folder / "sub" / "f_16bit.png"))
    assert sixteen.shape == (20, 20, 3) and abs(int(sixteen[0, 0, 0]) - 128) <= 1
    pal = np.asarray(load_image(image_folder / "e_pal.png")).astype(int)
    assert abs(pal[10, 2] - np.array(RED)).max() < 10

    # bytes and PIL in, a transparent palette image
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, "PNG")
    assert np.asarray(load_image(png.getvalue()))[0, 0].tolist() == [10, 20, 30]
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert np.asarray(load_image(p)).min() == 255

    with pytest.raises(FileNotFoundError, match="source"):
        load_image(image_folder / "missing.png")


def test_resize_crop_and_tensor() -> None:
    img = _half_red_blue(100, 50)
    out = resize_and_crop(img, 32)
    assert out.size == (32, 32)
    t = to_tensor(out)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    # centre crop of a red|blue image keeps both halves
    assert t[0, 16, 2] > 0.5 and t[2, 16, 29] > 0.5
    g = torch.Generator().manual_seed(0)
    crops = {
        tuple(resize_and_crop(img, 16, random_crop=True, generator=g).getpixel((0, 8)))
        for _ in range(20)
    }
    assert len(crops) > 1
    # round trip to PIL
    assert np.abs(np.asarray(to_pil(t)).astype(int) - np.asarray(out).astype(int)).max() <= 1
    big = image_to_tensor(_half_red_blue(512, 300), 64)
    assert big.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="size"):
        resize_and_crop(img, 0)


def test_make_low_res() -> None:
    x = torch.rand(3, 256, 256) * 2 - 1
    low = make_low_res(x, 64)
    assert low.shape == (3, 64, 64)
    assert torch.allclose(low[:, 0, 0], x[:, :4, :4].mean(dim=(1, 2)), atol=1e-5)
    assert make_low_res(x[None].repeat(2, 1, 1, 1), 64).shape == (2, 3, 64, 64)
    odd = make_low_res(torch.rand(3, 100, 100) * 2 - 1, 64)
    assert odd.shape == (3, 64, 64) and odd.abs().max() <= 1
    pair = add_low_res({"image": x, "caption": "c"}, 64)
    assert set(pair) == {"image", "low_res", "caption"} and pair["low_res"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="image"):
        make_low_res(torch.rand(64, 64), 32)


def test_folder_dataset(image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="glidekit.data.folder"):
        with pytest.warns(RuntimeWarning, match="g_corrupt"):
            ds = ImageFolderDataset(image_folder, image_size=32)
    assert len(ds) == 7  # 8 images, the corrupt one skipped
    assert not any("g_corrupt" in str(p) for p in ds.paths)
    missing_logs = [r for r in caplog.records if "no .txt caption" in r.getMessage()]
    assert len(missing_logs) == 1 and "1 of 7" in missing_logs[0].getMessage()

    by_name = {p.stem: i for i, p in enumerate(ds.paths)}
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"image", "caption"}
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert -1.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
    assert ds[by_name["a_rgb"]]["caption"] == "a red and blue picture"
    assert ds[by_name["h_nocap"]]["caption"] == ""
    assert ds[by_name["f_16bit"]]["caption"] == "sixteen"
    assert torch.allclose(ds[by_name["c_rgba"]]["image"], torch.ones(3, 32, 32))

    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4

    up = ImageFolderDataset(image_folder, image_size=32, low_res_size=8, verify=False)
    # verify=False: the corrupt file is indexed but skipped (with a warning) when loaded
    corrupt = [i for i, p in enumerate(up.paths) if "g_corrupt" in p.name][0]
    with pytest.warns(RuntimeWarning, match="failed to load"):
        item = up[corrupt]
    assert item["low_res"].shape == (3, 8, 8) and item["image"].shape == (3, 32, 32)


def test_folder_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="root"):
        ImageFolderDataset(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="low_res_size"):
        ImageFolderDataset(tmp_path, image_size=32, low_res_size=64)
