"""Tiny fixture trees that mimic each dataset's official download layout (a few images each).

Every ``make_<name>(root)`` writes the tree under ``root`` and returns what a correct loader must
report: the root to pass to ``load``, the rows per split (``None`` for datasets without official
splits) and the label names. The files deliberately exercise what real downloads contain: upper-case
extensions, GIF/PPM(.gz)/BMP/TIFF, palette and RGB masks, 0/1 and 0/255 masks, an extra top-level
folder and stray files.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 20, 24  # every fixture image is W x H


def fundus(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """RGB 'fundus': a bright disc on a black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) * 0.45) ** 2
    img = np.zeros((h, w, 3), np.uint8)
    img[disc] = rng.integers(90, 230, size=(int(disc.sum()), 3), dtype=np.uint8)
    return img


def grey(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def vessels(seed: int, h: int = H, w: int = W, value: int = 255) -> np.ndarray:
    """Binary 'vessel' mask with both values present."""
    rng = np.random.default_rng(1000 + seed)
    m = np.zeros((h, w), np.uint8)
    m[rng.integers(2, h - 2), :] = value
    m[:, rng.integers(2, w - 2)] = value
    return m


def write(path: Path, arr, **save_kwargs) -> Path:
    """Write an array (or a PIL image) to ``path``; the extension picks the format, ``.gz`` gzips it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    name = path.name
    if name.lower().endswith(".gz"):
        buf = io.BytesIO()
        img.save(buf, format=Image.registered_extensions()[Path(name[:-3]).suffix.lower()], **save_kwargs)
        path.write_bytes(gzip.compress(buf.getvalue()))
    else:
        img.save(path, format=Image.registered_extensions()[path.suffix.lower()], **save_kwargs)
    return path


def palette_mask(mask01: np.ndarray, colours=((4, 2, 4), (252, 254, 252))) -> Image.Image:
    """Palette image with indices 0/1 whose colours are near-black / near-white (DRIVE 2nd_manual)."""
    img = Image.new("P", (mask01.shape[1], mask01.shape[0]))
    img.putpalette([*colours[0], *colours[1]] + [0] * (256 - 2) * 3)
    img.putdata(mask01.astype(np.uint8).ravel().tolist())
    return img


def strays(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Thumbs.db").write_bytes(b"\x00\x01junk")
    (folder / ".DS_Store").write_bytes(b"\x00junk")


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A PNG whose header announces ``width x height`` pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )
    return path


# --------------------------------------------------------------------------------------------------


def make_fives(root: Path) -> dict:
    top = root / "FIVES A Fundus Image Dataset for AI-based Vessel Segmentation"  # extra top-level folder
    for split, names in {"train": ["1_A", "2_D", "3_N"], "test": ["1_A", "2_G"]}.items():
        for i, name in enumerate(names):
            write(top / split / "Original" / f"{name}.png", fundus(i))
            rgb_mask = np.repeat(vessels(i)[..., None], 3, axis=2)  # RGB 0/255 ground truth
            write(top / split / "Ground truth" / f"{name}.png", rgb_mask)
        strays(top / split / "Original")
    return {"root": root, "splits": {"train": 3, "test": 2}, "labels": ["background", "vessel"]}


def make_hrf(root: Path) -> dict:
    names = ["01_h", "01_dr", "01_g", "02_h"]
    for i, name in enumerate(names):
        ext = ".JPG" if name.endswith("dr") else ".jpg"  # the download mixes cases
        write(root / "images" / f"{name}{ext}", fundus(i), quality=95)
        write(root / "manual1" / f"{name}.tif", vessels(i))
        fov = np.repeat((fundus(i).max(axis=2) > 0).astype(np.uint8)[..., None] * 255, 3, axis=2)
        write(root / "mask" / f"{name}_mask.tif", fov)  # RGB FOV TIFF
    strays(root / "images")
    return {"root": root, "splits": None, "count": 4, "labels": ["background", "vessel"]}


def make_chase_db1(root: Path) -> dict:
    folder = root / "CHASEDB1"
    for i, name in enumerate(["Image_01L", "Image_01R", "Image_02L"]):
        write(folder / f"{name}.jpg", fundus(i), quality=95)
        write(folder / f"{name}_1stHO.png", Image.fromarray(vessels(i)).convert("1"))  # 1-bit PNG
        write(folder / f"{name}_2ndHO.png", vessels(i + 7))
    return {"root": root, "splits": None, "count": 3, "labels": ["background", "vessel"]}


def make_drive(root: Path) -> dict:
    for split, part, nums in (("training", "training", [21, 22]), ("test", "test", [1, 2, 3])):
        for n in nums:
            num = f"{n:02d}"
            write(root / split / "images" / f"{num}_{part}.tif", fundus(n))
            write(root / split / "1st_manual" / f"{num}_manual1.gif", vessels(n))
            write(root / split / "mask" / f"{num}_{part}_mask.gif", (fundus(n).max(axis=2) > 0).astype(np.uint8) * 255)
            if split == "test":
                write(root / split / "2nd_manual" / f"{num}_manual2.gif", palette_mask(vessels(n + 50) > 0))
        strays(root / split / "images")
    return {"root": root, "splits": {"train": 2, "test": 3}, "labels": ["background", "vessel"]}


def make_stare(root: Path) -> dict:
    for i, num in enumerate(["0001", "0002", "0044"]):
        gz = ".gz" if num != "0002" else ""
        write(root / "stare-images" / f"im{num}.ppm{gz}", fundus(i))
        write(root / "labels-ah" / f"im{num}.ah.ppm{gz}", np.repeat(vessels(i)[..., None], 3, axis=2))
        write(root / "labels-vk" / f"im{num}.vk.ppm{gz}", np.repeat(vessels(i + 3)[..., None], 3, axis=2))
    write(root / "stare-images" / "im0010.ppm", fundus(9))  # one of the 400 unlabelled images: ignored
    return {"root": root, "splits": None, "count": 3, "labels": ["background", "vessel"]}


def make_rose1(root: Path) -> dict:
    top = root / "ROSE" / "ROSE-1"
    for subset in ("SVC", "DVC", "SVC_DVC"):
        for split, nums in (("train", [1, 2, 3]), ("test", [31, 32])):
            for n in nums:
                ext = ".png" if subset == "SVC_DVC" else ".tif"
                write(top / subset / split / "img" / f"{n:02d}{ext}", grey(n))
                write(top / subset / split / "gt" / f"{n:02d}.tif", vessels(n))
                if subset == "SVC" and split == "test":
                    write(top / subset / split / "thick_gt" / f"{n:02d}.tif", vessels(n))
                    write(top / subset / split / "thin_gt" / f"{n:02d}.tif", vessels(n + 1))
    return {"root": root / "ROSE", "splits": {"train": 3, "test": 2}, "labels": ["background", "vessel"]}


def make_rose2(root: Path) -> dict:
    top = root / "ROSE-2"
    for split, nums in (("train", [1, 2]), ("test", [91])):
        for n in nums:
            write(top / split / "original" / f"{n}.png", grey(n))
            write(top / split / "gt" / f"{n}.png", vessels(n, value=1))  # 0/1 mask
    return {"root": top, "splits": {"train": 2, "test": 1}, "labels": ["background", "vessel"]}


def _octa500(root: Path, fov: str, ids) -> dict:
    top = root / "OCTA-500" / f"OCTA_{fov}"
    for i, num in enumerate(ids):
        for layer in ("FULL", "ILM_OPL", "OPL_BM"):
            write(top / "ProjectionMaps" / f"OCTA({layer})" / f"{num}.bmp", grey(i + len(layer)))
        artery = vessels(i)
        vein = np.zeros_like(artery)
        vein[:, 1] = 255
        vein[artery > 0] = 255  # overlaps the artery: crossing pixels go to the artery
        for folder, arr in (
            ("GT_LargeVessel", np.maximum(artery, vein)),
            ("GT_Capillary", vessels(i + 5)),
            ("GT_Artery", artery),
            ("GT_Vein", vein),
            ("GT_FAZ", vessels(i + 9)),
        ):
            write(top / folder / f"{num}.bmp", arr)
    (top / "Text labels.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    return {
        "root": root / "OCTA-500",
        "splits": {"train": 1, "validation": 1, "test": 1},
        "labels": ["background", "vessel"],
    }


def make_octa500_3m(root: Path) -> dict:
    return _octa500(root, "3M", [10301, 10441, 10451])


def make_octa500_6m(root: Path) -> dict:
    return _octa500(root, "6M", [10001, 10181, 10201])


IDRID_CODES = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates",
               "SE": "4. Soft Exudates", "OD": "5. Optic Disc"}  # fmt: skip


def idrid_lesion(code: str, seed: int) -> np.ndarray:
    """Red-on-black RGB mask (as IDRiD ships them); MA and HE overlap at pixel (5, 5)."""
    m = np.zeros((H, W), bool)
    if code == "MA":
        m[5, 5] = m[5, 6] = True
    elif code == "HE":
        m[4:7, 4:7] = True
    elif code == "EX":
        m[12:14, 15:18] = True
    elif code == "SE":
        m[15, 3:6] = True
    else:  # OD, overlapping the EX
        m[10:16, 14:20] = True
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[m, 0] = 255
    return rgb


def make_idrid(root: Path) -> dict:
    seg = root / "A. Segmentation"
    layout = {"a. Training Set": {"01": ["MA", "HE", "EX", "SE", "OD"], "02": ["MA", "EX", "OD"]},
              "b. Testing Set": {"55": ["HE", "OD"]}}  # fmt: skip
    for split_dir, images in layout.items():
        for i, (num, codes) in enumerate(images.items()):
            write(seg / "1. Original Images" / split_dir / f"IDRiD_{num}.jpg", fundus(i), quality=95)
            for code in codes:
                write(
                    seg
                    / "2. All Segmentation Groundtruths"
                    / split_dir
                    / IDRID_CODES[code]
                    / f"IDRiD_{num}_{code}.tif",
                    idrid_lesion(code, i),
                )
    return {"root": root, "splits": {"train": 2, "test": 1},
            "labels": ["background", "microaneurysm", "haemorrhage", "hard exudate", "soft exudate"]}  # fmt: skip


def aroi_mask(seed: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for k in range(8):  # horizontal bands 0..7, all classes present
        m[k * 2 : k * 2 + 2] = k
    m[16:] = 4
    return m


def make_aroi(root: Path) -> dict:
    top = root / "AROI - online" / "24 patient"
    for p in (1, 2):
        for scan in (40, 41):
            name = f"patient{p}_raw{scan:04d}"
            write(top / f"patient{p}" / "raw" / "labeled" / f"{name}.png", grey(p * 100 + scan))
            write(top / f"patient{p}" / "mask" / "number" / f"{name}.png", aroi_mask(scan))
            write(
                top / f"patient{p}" / "mask" / "color" / f"{name}.png", np.repeat(aroi_mask(scan)[..., None] * 30, 3, 2)
            )
    labels = ["background (above ILM)", "ILM-IPL/INL", "IPL/INL-RPE", "RPE-BM", "under BM", "PED", "SRF", "IRF"]
    return {"root": root, "splits": None, "count": 4, "labels": labels}


BUILDERS = {
    "fives": make_fives,
    "hrf": make_hrf,
    "chase_db1": make_chase_db1,
    "drive": make_drive,
    "stare": make_stare,
    "rose1": make_rose1,
    "rose2": make_rose2,
    "octa500_3m": make_octa500_3m,
    "octa500_6m": make_octa500_6m,
    "idrid": make_idrid,
    "aroi": make_aroi,
}
