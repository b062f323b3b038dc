"""Synthetic retinal images with exact ground truth.

Three modalities are generated procedurally (numpy + PIL only, deterministic per seed):

* :func:`fundus` -- colour fundus photograph with a binary vessel mask and a circular field of view.
* :func:`octa` -- en-face OCT angiogram (bright vessels on a dark speckled background, foveal avascular
  zone, capillary meshwork); the mask holds the large vessels only.
* :func:`oct_bscan` -- OCT B-scan with curved retinal layer bands and a foveal pit; the mask holds one
  class id per layer.

The vessel masks are drawn from the very geometry that darkens (fundus) or brightens (OCTA) the image:
vessel centre lines are rasterised at ``supersample``x the output resolution, the coverage fraction of
every output pixel is computed by block averaging and the mask is ``coverage >= 0.5``. Exactly the mask
pixels are then shaded (by the mean value of the vessels covering them), and only afterwards does the
simulated optics blur and add noise -- so with ``blur=0, noise=0`` the shaded pixels *are* the mask.

Samples can be collected with :func:`make_samples`, turned into a ``datasets.Dataset`` with
:func:`to_dataset` (columns ``image`` / ``label`` / ``fov`` / ``id``) or written to disk with
:func:`save_folder` (``root/images/NAME.png`` + ``root/masks/NAME.png``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import LoSamValueError

__all__ = [
    "SyntheticSample",
    "fundus",
    "octa",
    "oct_bscan",
    "make_samples",
    "derive_seed",
    "to_dataset",
    "save_folder",
    "id2label_from_dataset",
    "OCT_LAYER_NAMES",
    "SYNTHETIC_KINDS",
]

#: Names of the OCT layer classes, top (vitreous side) to bottom. ``oct_bscan(num_layers=K)`` labels the
#: first ``K`` of these as classes ``1..K`` (names ``layer_k`` beyond the list); class 0 is everything
#: outside the labelled layers (vitreous above the ILM and tissue below the last labelled layer).
OCT_LAYER_NAMES: tuple[str, ...] = (
    "RNFL",  # retinal nerve fibre layer
    "GCL+IPL",  # ganglion cell + inner plexiform layer
    "INL",  # inner nuclear layer
    "OPL",  # outer plexiform layer
    "ONL",  # outer nuclear layer (+ Henle fibres)
    "IS/OS",  # photoreceptor inner/outer segments (ellipsoid zone)
    "RPE",  # retinal pigment epithelium / Bruch's membrane
    "choroid",
)

#: Kinds accepted by :func:`make_samples` (aliases map to the same generator).
SYNTHETIC_KINDS: tuple[str, ...] = ("fundus", "octa", "oct")


# --------------------------------------------------------------------------------------------------
# Sample container
# --------------------------------------------------------------------------------------------------
@dataclass
class SyntheticSample:
    """One generated image with its ground truth.

    Attributes:
        image: ``uint8`` array, ``(H, W, 3)`` RGB for fundus, ``(H, W)`` grayscale for OCTA / OCT.
        mask: ``uint8`` array ``(H, W)`` of class ids (``0`` = background, see ``id2label``).
        fov: ``uint8`` array ``(H, W)`` with 1 inside the field of view, or ``None``.
        id2label: class id -> name, always containing ``0``.
        modality: ``"fundus"``, ``"octa"`` or ``"oct"``.
        id: short identifier, e.g. ``"fundus_s0"``; used as the file / dataset row name.
        seed: seed the sample was generated with.
        meta: extra generator facts (optic disc centre, FAZ centre, layer boundaries, ...).
    """

    image: np.ndarray
    mask: np.ndarray
    fov: np.ndarray | None
    id2label: dict[int, str]
    modality: str
    id: str = ""
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def is_binary(self) -> bool:
        return len(self.id2label) <= 2

    def to_pil(self) -> Image.Image:
        """The image as a PIL image (``RGB`` for fundus, ``L`` otherwise)."""
        return Image.fromarray(self.image)

    def mask_pil(self, binary_as_255: bool = False) -> Image.Image:
        """The mask as an ``L`` image of class ids (or 0/255 for binary masks if asked)."""
        m = self.mask
        if binary_as_255 and self.is_binary:
            m = (m > 0).astype(np.uint8) * 255
        return Image.fromarray(np.ascontiguousarray(m))

    def fov_pil(self) -> Image.Image | None:
        """The field of view as a 0/255 ``L`` image, or ``None``."""
        if self.fov is None:
            return None
        return Image.fromarray((self.fov > 0).astype(np.uint8) * 255)

    def overlay(self, color: tuple[int, int, int] = (0, 255, 0), alpha: float = 0.5) -> Image.Image:
        """RGB visualisation with the (non-background) mask blended in ``color`` (multi-class: palette)."""
        img = self.image if self.image.ndim == 3 else np.repeat(self.image[..., None], 3, axis=2)
        out = img.astype(np.float32)
        if self.is_binary:
            sel = self.mask > 0
            out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(color, np.float32)
        else:
            palette = _palette(self.num_labels)
            for k in range(1, self.num_labels):
                sel = self.mask == k
                out[sel] = (1 - alpha) * out[sel] + alpha * palette[k]
        return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _palette(n: int) -> np.ndarray:
    hues = np.linspace(0.0, 1.0, max(n - 1, 1), endpoint=False)
    cols = [np.zeros(3, np.float32)]
    for h in hues:
        i = int(h * 6) % 6
        f = h * 6 - int(h * 6)
        v, p, q, t = 255.0, 40.0, 255.0 * (1 - 0.85 * f), 255.0 * (0.15 + 0.85 * f)
        cols.append(np.asarray([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32))
    return np.stack(cols[:n])


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise: a coarse ``cells``-per-side grid upsampled bicubically."""
    h, w = shape
    gh = max(2, int(round(cells * h / max(h, w)))) + 3
    gw = max(2, int(round(cells * w / max(h, w)))) + 3
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    # Upsample a slightly larger canvas and crop the border so the bicubic edge effects vanish.
    fh, fw = int(round(h * gh / (gh - 3))), int(round(w * gw / (gw - 3)))
    big = np.asarray(Image.fromarray(coarse).resize((fw, fh), Image.BICUBIC), dtype=np.float32)
    oy, ox = (fh - h) // 2, (fw - w) // 2
    out = big[oy : oy + h, ox : ox + w]
    out = out - out.mean()
    return out / (out.std() + 1e-6)


def _blur(arr: np.ndarray, radius: float | tuple[float, float]) -> np.ndarray:
    """Separable Gaussian blur (std ``radius`` px, or ``(sy, sx)``) of a 2-D float array, edge-padded."""
    sy, sx = (radius, radius) if np.isscalar(radius) else radius
    out = np.asarray(arr, dtype=np.float32)
    for axis, sd in ((0, float(sy)), (1, float(sx))):
        if sd <= 0:
            continue
        r = max(1, int(math.ceil(3.0 * sd)))
        k = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float32) / sd) ** 2)
        k /= k.sum()
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, kv in enumerate(k):
            sl = [slice(None), slice(None)]
            sl[axis] = slice(i, i + n)
            acc += kv * padded[tuple(sl)]
        out = acc
    return out


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def derive_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` in a collection seeded with ``seed`` (distinct for distinct indices)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1, np.uint32)[0])


# --------------------------------------------------------------------------------------------------
# Vessel trees
# --------------------------------------------------------------------------------------------------
@dataclass
class _Branch:
    x: float
    y: float
    heading: float
    width: float
    value: float  # shading strength of this vessel in [0, 1]
    budget: float  # remaining length in pixels
    target: float | None = None  # heading the branch drifts towards (arcades)
    pull: float = 0.0  # drift rate towards ``target`` (radians per pixel per radian of error)
    depth: int = 0
    root: tuple[float, float] | None = None  # where the tree started (children drift away from it)


def _grow_trees(
    rng: np.random.Generator,
    roots: Sequence[_Branch],
    *,
    step: float,
    min_width: float,
    tortuosity: float,
    branch_every: float,
    inside: Any,
    spread: float = 1.0,
    max_segments: int = 200_000,
) -> np.ndarray:
    """Grow branching vessel trees by smoothly curving random walks.

    Returns an ``(N, 6)`` float array of segments ``x0, y0, x1, y1, width, value`` (output pixels).
    ``inside(x, y) -> bool`` stops a branch when it leaves the allowed region.
    """
    segs: list[tuple[float, float, float, float, float, float]] = []
    stack = list(roots)[::-1]
    # per-step curvature noise so that tortuosity does not depend on ``step``
    kappa_sd = tortuosity * math.sqrt(step) * 0.018
    while stack and len(segs) < max_segments:
        b = stack.pop()
        b_root = b.root if b.root is not None else (b.x, b.y)
        x, y, th, w = b.x, b.y, b.heading, b.width
        curv = 0.0
        travelled = 0.0
        next_branch = rng.exponential(branch_every * (0.5 + 0.5 * min(w, 6.0) / 3.0))
        taper = math.exp(-step / max(b.budget * 2.5, 1.0))
        while travelled < b.budget:
            curv = 0.8 * curv + rng.normal(0.0, kappa_sd)
            th = th + curv
            if b.target is not None and b.pull > 0:
                th += b.pull * step * _wrap(b.target - th)
            nx, ny = x + step * math.cos(th), y + step * math.sin(th)
            nw = max(min_width, w * taper)
            if not inside(nx, ny):
                break
            segs.append((x, y, nx, ny, 0.5 * (w + nw), b.value))
            x, y, w = nx, ny, nw
            travelled += step
            next_branch -= step
            if next_branch <= 0:
                next_branch = rng.exponential(branch_every * (0.5 + 0.5 * min(w, 6.0) / 3.0))
                ratio = rng.uniform(0.45, 0.8)
                cw = w * ratio
                if cw >= min_width * 0.999 and b.depth < 12:
                    # Murray-like: parent gets thinner when it gives off a big child
                    w = max(min_width, w * (1.0 - 0.35 * ratio**3))
                    side = 1.0 if rng.random() < 0.5 else -1.0
                    ang = th + side * rng.uniform(math.radians(25), math.radians(75))
                    budget = max(4 * step, rng.uniform(12.0, 30.0) * cw + rng.uniform(0.0, 0.1) * branch_every * 10)
                    # children drift away from the tree root (spread out instead of looping back)
                    away = math.atan2(y - b_root[1], x - b_root[0]) if spread > 0 else None
                    if away is not None and abs(_wrap(away - ang)) > math.radians(100):
                        away = ang  # do not force a U-turn
                    stack.append(
                        _Branch(
                            x,
                            y,
                            ang,
                            cw,
                            b.value * rng.uniform(0.85, 1.0),
                            budget,
                            away,
                            spread / max(budget, 1.0),
                            b.depth + 1,
                            b_root,
                        )
                    )
    if not segs:
        return np.zeros((0, 6), np.float32)
    return np.asarray(segs, dtype=np.float64)


def _rasterise(segs: np.ndarray, shape: tuple[int, int], ss: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise segments at ``ss``x supersampling.

    Returns ``(coverage, shade)`` float32 ``(H, W)`` arrays: the fraction of each output pixel covered
    by a vessel, and the coverage-weighted vessel ``value`` (thicker vessels drawn last, on top).
    """
    h, w = shape
    cov_img = Image.new("L", (w * ss, h * ss), 0)
    val_img = Image.new("L", (w * ss, h * ss), 0)
    dc, dv = ImageDraw.Draw(cov_img), ImageDraw.Draw(val_img)
    if len(segs):
        order = np.argsort(segs[:, 4], kind="stable")
        s = segs[order]
        # continuous output coordinate x -> PIL supersampled pixel index x*ss - 0.5
        p = s[:, :4] * ss - 0.5
        widths = s[:, 4] * ss
        vals = np.clip(np.rint(s[:, 5] * 255), 1, 255).astype(int)
        for (x0, y0, x1, y1), ws, v in zip(p.tolist(), widths.tolist(), vals.tolist()):
            iw = max(1, int(round(ws)))
            r = ws / 2.0
            dc.line((x0, y0, x1, y1), fill=255, width=iw)
            dv.line((x0, y0, x1, y1), fill=v, width=iw)
            if r >= 1.0:
                box = (x1 - r + 0.5, y1 - r + 0.5, x1 + r - 0.5, y1 + r - 0.5)
                dc.ellipse(box, fill=255)
                dv.ellipse(box, fill=v)
    cov = np.asarray(cov_img, dtype=np.float32).reshape(h, ss, w, ss).mean(axis=(1, 3)) / 255.0
    val = np.asarray(val_img, dtype=np.float32).reshape(h, ss, w, ss).mean(axis=(1, 3)) / 255.0
    return cov, val


def _default_ss(size: int) -> int:
    return 4 if size <= 640 else 2


# --------------------------------------------------------------------------------------------------
# Colour fundus
# --------------------------------------------------------------------------------------------------
def fundus(
    size: int = 256,
    seed: int = 0,
    *,
    vessel_contrast: float = 0.55,
    noise: float = 0.02,
    blur: float = 0.5,
    tortuosity: float = 1.0,
    branching: float = 1.0,
    max_width: float | None = None,
    min_width: float | None = None,
    num_trunks: int = 8,
    fovea: bool = True,
    brightness: float = 1.0,
    supersample: int | None = None,
) -> SyntheticSample:
    """Synthetic colour fundus photograph with an exact binary vessel mask.

    Args:
        size: output side length (square image).
        seed: RNG seed; the same seed and arguments give byte-identical output.
        vessel_contrast: how much vessels darken the background (0 = invisible, 1 = black veins).
        noise: std of additive Gaussian pixel noise, as a fraction of 255.
        blur: Gaussian blur radius in pixels at ``size=256`` (scaled with ``size``).
        tortuosity: curvature noise scale of the vessel random walk (1 = realistic).
        branching: branch density multiplier (larger = more branches).
        max_width: trunk width in pixels at the disc (default ``max(3, 0.016*size)``).
        min_width: width of the thinnest branches (default ``max(1.25, size/512)`` px).
        num_trunks: number of vessel trees leaving the optic disc (2..10; 8 = 4 arcades x artery/vein).
        fovea: draw the darker macula / fovea.
        brightness: global illumination multiplier.
        supersample: rasterisation factor for the vessels (default 4, or 2 above 640 px).

    Returns:
        :class:`SyntheticSample` with ``image`` RGB ``(size, size, 3)`` uint8, ``mask`` uint8 0/1
        (1 = vessel, inside the FOV only), ``fov`` uint8 0/1 (circular field of view; image is 0 outside),
        ``id2label = {0: "background", 1: "vessel"}``.
    """
    rng = np.random.default_rng(seed)
    S = int(size)
    ss = int(supersample or _default_ss(S))
    c = (S - 1) / 2.0 + 0.5  # continuous centre
    R = S * rng.uniform(0.455, 0.475)
    wmax = float(max_width) if max_width is not None else max(3.0, 0.016 * S)
    wmin = float(min_width) if min_width is not None else max(1.25, S / 512.0)
    wmin = min(wmin, wmax)

    # ---- layout (built as a "right eye": disc left of centre, fovea right; mirrored at random) -----
    mirror = bool(rng.random() < 0.5)
    disc_r = S * rng.uniform(0.065, 0.08)
    dx, dy = c - S * rng.uniform(0.17, 0.22), c + S * rng.uniform(-0.04, 0.03)
    fx, fy = c + S * rng.uniform(0.10, 0.15), dy + S * rng.uniform(0.0, 0.04)

    def inside(x: float, y: float) -> bool:
        if (x - c) ** 2 + (y - c) ** 2 > (R * 1.01) ** 2:
            return False
        return (x - fx) ** 2 + (y - fy) ** 2 > (0.045 * S) ** 2  # foveal avascular zone

    deg = math.radians
    # (start heading, target heading, pull, width factor, budget factor) in the un-mirrored frame
    specs = [
        (deg(-65), deg(12), 1.0, 1.0, 1.0),  # superior temporal vein
        (deg(65), deg(-12), 1.0, 1.0, 1.0),  # inferior temporal vein
        (deg(-50), deg(5), 1.0, 0.8, 0.95),  # superior temporal artery
        (deg(50), deg(-5), 1.0, 0.8, 0.95),  # inferior temporal artery
        (deg(-120), deg(-165), 0.6, 0.7, 0.6),  # superior nasal
        (deg(120), deg(165), 0.6, 0.7, 0.6),  # inferior nasal
        (deg(-105), deg(-150), 0.5, 0.6, 0.6),  # superior nasal 2
        (deg(105), deg(150), 0.5, 0.6, 0.6),  # inferior nasal 2
        (deg(-5), deg(0), 0.4, 0.45, 0.3),  # papillomacular
        (deg(180), deg(180), 0.3, 0.45, 0.45),  # nasal
    ]
    n = int(np.clip(num_trunks, 1, len(specs)))
    roots = []
    step = max(1.5, S / 160.0)
    for i, (a0, tgt, pull, wf, bf) in enumerate(specs[:n]):
        vein = i % 2 == 0 if i < 4 else rng.random() < 0.5
        a0 += rng.normal(0, deg(8))
        ox, oy = math.cos(a0) * disc_r * 0.05, math.sin(a0) * disc_r * 0.05
        roots.append(
            _Branch(
                dx + ox,
                dy + oy,
                a0,
                wmax * wf * rng.uniform(0.9, 1.05) * (1.0 if vein else 0.85),
                (1.0 if vein else 0.8) * rng.uniform(0.92, 1.0),
                S * bf * rng.uniform(0.9, 1.2),
                tgt + rng.normal(0, deg(6)),
                pull * 2.2 / S,
            )
        )
    segs = _grow_trees(
        rng,
        roots,
        step=step,
        min_width=wmin,
        tortuosity=tortuosity,
        branch_every=0.09 * S / max(branching, 1e-3),
        inside=inside,
    )
    if mirror:
        segs = segs.copy()
        segs[:, 0] = S - segs[:, 0]
        segs[:, 2] = S - segs[:, 2]
        dx, fx = S - dx, S - fx
    cov, shade = _rasterise(segs, (S, S), ss)

    # ---- background -------------------------------------------------------------------------------
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    r2 = ((xx - c) ** 2 + (yy - c) ** 2) / (R * R)
    fov = (r2 <= 1.0).astype(np.uint8)
    base = np.asarray([205.0, 92.0, 38.0], np.float32) * rng.uniform(0.9, 1.08, 3).astype(np.float32)
    illum = brightness * (1.0 - 0.45 * r2**1.6)  # vignetting towards the rim
    illum *= 1.0 + 0.06 * _smooth_noise(rng, (S, S), 3)  # uneven illumination
    texture = _smooth_noise(rng, (S, S), 14) * 0.05 + _smooth_noise(rng, (S, S), 45) * 0.025  # choroid
    rgb = base[None, None, :] * (illum * (1.0 + texture))[..., None]

    # optic disc: bright yellow with a brighter cup, soft edge, slightly elliptical
    ex = rng.uniform(0.9, 1.0)
    dr = np.sqrt(((xx - dx) / ex) ** 2 + (yy - dy) ** 2) / disc_r
    disc = 0.5 - 0.5 * np.tanh((dr - 1.0) * 4.5)
    cup = np.exp(-((dr / 0.45) ** 2))
    disc_col = np.asarray([255.0, 215.0, 140.0], np.float32) * rng.uniform(0.93, 1.0)
    rgb = rgb * (1 - disc[..., None] * 0.85) + disc_col * (0.85 * disc[..., None])
    rgb = rgb + np.asarray([20.0, 30.0, 30.0], np.float32) * cup[..., None]
    # macula / fovea: darker, slightly browner
    if fovea:
        fr2 = ((xx - fx) ** 2 + (yy - fy) ** 2) / (0.09 * S) ** 2
        mac = np.exp(-fr2) * 0.28 + np.exp(-fr2 * 6.0) * 0.15
        rgb = rgb * (1.0 - mac[..., None] * np.asarray([0.8, 1.0, 1.0], np.float32))

    # ---- vessels: darken exactly the mask pixels ---------------------------------------------------
    # The mask is the supersampled coverage thresholded at 0.5; each mask pixel is darkened by the mean
    # value of the vessels covering it (veins darker than arteries, deep branches a little fainter).
    # Anti-aliasing comes from the optical blur below, so before blur/noise image and mask agree exactly.
    fov_b = r2 <= 1.0
    mask = ((cov >= 0.5) & fov_b).astype(np.uint8)
    value = np.where(mask > 0, shade / np.maximum(cov, 1e-6), 0.0).astype(np.float32)
    # dark red: green and blue are absorbed most, red a little
    absorb = np.asarray([0.55, 1.0, 0.9], np.float32) * float(vessel_contrast)
    rgb = rgb * (1.0 - np.clip(value, 0.0, 1.0)[..., None] * absorb)

    # ---- acquisition: blur, noise, FOV ------------------------------------------------------------
    img = Image.fromarray(_to_uint8(rgb))
    br = blur * S / 256.0
    if br > 0:
        img = img.filter(ImageFilter.GaussianBlur(br))
    out = np.asarray(img, dtype=np.float32)
    if noise > 0:
        out = out + rng.normal(0.0, noise * 255.0, out.shape).astype(np.float32)
    out = _to_uint8(out)
    out[fov == 0] = 0
    return SyntheticSample(
        image=out,
        mask=mask,
        fov=fov,
        id2label={0: "background", 1: "vessel"},
        modality="fundus",
        id=f"fundus_s{seed}",
        seed=int(seed),
        meta={
            "disc_center": (float(dx), float(dy)),
            "disc_radius": float(disc_r),
            "fovea_center": (float(fx), float(fy)),
            "fov_center": (float(c), float(c)),
            "fov_radius": float(R),
            "width_range": (float(wmin), float(wmax)),
            "num_segments": int(len(segs)),
        },
    )


# --------------------------------------------------------------------------------------------------
# OCTA
# --------------------------------------------------------------------------------------------------
def octa(
    size: int = 256,
    seed: int = 0,
    *,
    noise: float = 1.0,
    capillary_density: float = 1.0,
    vessel_brightness: float = 1.0,
    max_width: float | None = None,
    min_width: float | None = None,
    num_trees: int | None = None,
    supersample: int | None = None,
) -> SyntheticSample:
    """Synthetic en-face OCT angiogram (3x3 mm-like, fovea centred).

    Bright large vessels grow from the image border towards the centre and stop at a dark, irregular
    foveal avascular zone (FAZ); a dense capillary meshwork fills the rest; speckle noise on top.

    Returns:
        :class:`SyntheticSample` with ``image`` grayscale ``(size, size)`` uint8, ``mask`` uint8 0/1 for
        the large vessels (capillaries are *not* labelled), ``fov=None``,
        ``id2label = {0: "background", 1: "vessel"}``.
    """
    rng = np.random.default_rng(seed)
    S = int(size)
    ss = int(supersample or _default_ss(S))
    c = S / 2.0
    wmax = float(max_width) if max_width is not None else max(2.5, 0.013 * S)
    wmin = float(min_width) if min_width is not None else max(1.5, S / 340.0)
    wmin = min(wmin, wmax)

    # FAZ: irregular dark region near the centre
    fcx, fcy = c + S * rng.normal(0, 0.02), c + S * rng.normal(0, 0.02)
    faz_r = S * rng.uniform(0.06, 0.085)
    harm = rng.normal(0, 0.08, 4)
    phase = rng.uniform(0, 2 * math.pi, 4)

    def faz_radius(ang: np.ndarray | float) -> np.ndarray | float:
        k = np.arange(2, 6)
        return faz_r * (1.0 + np.sum(harm * np.cos(np.multiply.outer(ang, k) + phase), axis=-1))

    def inside(x: float, y: float) -> bool:
        if x < -2 or y < -2 or x > S + 2 or y > S + 2:
            return False
        ang = math.atan2(y - fcy, x - fcx)
        return math.hypot(x - fcx, y - fcy) > float(faz_radius(ang)) * 1.25

    n_trees = int(num_trees) if num_trees is not None else int(rng.integers(6, 10))
    roots = []
    base_ang = rng.uniform(0, 2 * math.pi)
    for i in range(n_trees):
        ang = base_ang + 2 * math.pi * (i + rng.uniform(-0.3, 0.3)) / n_trees
        # start on the border square, head roughly to the centre
        t = 0.5 / max(abs(math.cos(ang)), abs(math.sin(ang)))
        sx, sy = c + S * t * math.cos(ang) * 0.995, c + S * t * math.sin(ang) * 0.995
        head = math.atan2(fcy - sy, fcx - sx) + rng.normal(0, math.radians(18))
        roots.append(
            _Branch(
                sx,
                sy,
                head,
                wmax * rng.uniform(0.7, 1.0),
                rng.uniform(0.85, 1.0),
                S * rng.uniform(0.45, 0.7),
                head,
                0.3 / S,
            )
        )
    segs = _grow_trees(
        rng,
        roots,
        step=max(1.5, S / 160.0),
        min_width=wmin,
        tortuosity=1.3,
        branch_every=0.11 * S,
        inside=inside,
    )
    cov, shade = _rasterise(segs, (S, S), ss)

    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    ang = np.arctan2(yy - fcy, xx - fcx)
    rad = np.hypot(xx - fcx, yy - fcy)
    faz_edge = faz_radius(ang).astype(np.float32)
    outside_faz = np.clip((rad - faz_edge) / (0.02 * S), 0.0, 1.0)

    # capillary meshwork: zero-level lines of band-limited noise (a thin, connected, curvy network)
    cap = np.zeros((S, S), np.float32)
    for cells, amp, thick in ((S / 7.0, 1.0, 0.2), (S / 4.0, 0.7, 0.25)):
        nz = _smooth_noise(rng, (S, S), max(4.0, cells * capillary_density))
        cap = np.maximum(cap, amp * np.exp(-((nz / thick) ** 2)))
    cap *= 0.55 + 0.45 * np.clip(0.5 + 0.5 * _smooth_noise(rng, (S, S), 10), 0, 1)  # flow variation
    cap *= outside_faz

    bg = 18.0 + 8.0 * _smooth_noise(rng, (S, S), 6)
    img = bg + 85.0 * cap
    # large vessels: exactly the mask pixels, bright (value-weighted); they hide the capillaries below
    mask = (cov >= 0.5).astype(np.uint8)
    value = np.where(mask > 0, shade / np.maximum(cov, 1e-6), 0.0).astype(np.float32)
    m = mask.astype(np.float32)
    img = img * (1.0 - m) + (60.0 + 160.0 * np.clip(value, 0, 1)) * vessel_brightness * m
    img = _blur(img.astype(np.float32), 0.6 * S / 256.0)
    # speckle: multiplicative gamma noise + additive noise
    if noise > 0:
        k = 6.0 / noise
        img = img * rng.gamma(k, 1.0 / k, (S, S)).astype(np.float32)
        img = img + rng.normal(0.0, 6.0 * noise, (S, S)).astype(np.float32)
    out = _to_uint8(img)
    return SyntheticSample(
        image=out,
        mask=mask,
        fov=None,
        id2label={0: "background", 1: "vessel"},
        modality="octa",
        id=f"octa_s{seed}",
        seed=int(seed),
        meta={
            "faz_center": (float(fcx), float(fcy)),
            "faz_radius": float(faz_r),
            "width_range": (float(wmin), float(wmax)),
            "num_segments": int(len(segs)),
        },
    )


# --------------------------------------------------------------------------------------------------
# OCT B-scan
# --------------------------------------------------------------------------------------------------
# relative thickness (fraction of total retina thickness away from the fovea), foveal thinning factor
# (1 = vanishes at the pit centre, negative = thickens) and brightness (0..1) of each canonical layer.
_OCT_LAYERS = (
    # name, thickness, foveal thinning, brightness
    ("RNFL", 0.13, 0.97, 0.80),
    ("GCL+IPL", 0.22, 0.93, 0.52),
    ("INL", 0.10, 0.85, 0.28),
    ("OPL", 0.08, 0.6, 0.50),
    ("ONL", 0.22, -0.55, 0.18),
    ("IS/OS", 0.07, 0.0, 0.75),
    ("RPE", 0.06, 0.0, 0.95),
    ("choroid", 0.20, 0.0, 0.42),
)


def oct_bscan(
    size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    num_layers: int = 7,
    noise: float = 1.0,
    pit_depth: float = 1.0,
) -> SyntheticSample:
    """Synthetic OCT B-scan through the fovea.

    Layers are horizontal bands whose boundaries curve with the globe and dip into a foveal pit, where
    the inner layers thin out (a 1 px minimum keeps every layer present in every column) and the outer
    nuclear layer thickens.

    Args:
        size: ``(height, width)`` or a single int for a square scan.
        seed: RNG seed.
        num_layers: number of labelled layers ``K`` (1..8 use :data:`OCT_LAYER_NAMES`; more add
            generic ``layer_k`` bands below the choroid).
        noise: speckle strength multiplier (0 = clean).
        pit_depth: foveal pit depth multiplier (0 = flat).

    Returns:
        :class:`SyntheticSample` with ``image`` grayscale ``(H, W)`` uint8, ``mask`` uint8 class ids:
        ``0`` = background (vitreous above the inner limiting membrane and any tissue below layer K),
        ``k`` = the k-th layer counted from the top (``id2label[k]`` = ``OCT_LAYER_NAMES[k-1]``), so
        along every image column the labels of the retina increase from top to bottom. ``fov=None``.
    """
    rng = np.random.default_rng(seed)
    if isinstance(size, (int, np.integer)):
        H = W = int(size)
    else:
        H, W = int(size[0]), int(size[1])
    K = int(num_layers)
    if K < 1:
        raise LoSamValueError("num_layers must be >= 1")
    layers = list(_OCT_LAYERS)
    while len(layers) < K:
        j = len(layers) + 1
        layers.append((f"layer_{j}", 0.06, 0.0, 0.3 if j % 2 else 0.6))
    # the rendered stack always includes everything down to the choroid so the image looks complete
    n_draw = max(K, len(_OCT_LAYERS))
    layers = layers[:n_draw]

    x = np.arange(W, dtype=np.float32) + 0.5
    xf = W * rng.uniform(0.42, 0.58)  # fovea position
    sig = W * rng.uniform(0.09, 0.13)
    pit = np.exp(-0.5 * ((x - xf) / sig) ** 2).astype(np.float32)
    retina = H * rng.uniform(0.30, 0.36)  # retina thickness (RNFL..RPE) away from the fovea
    pit_scale = float(np.clip(pit_depth, 0.0, 1.5))
    thick = []
    for _name, frac, thin, _ in layers:
        shrink = min(thin * pit_scale, 0.99) if thin >= 0 else thin * pit_scale
        t = retina * frac * (1.0 - shrink * pit)
        t = t * (1.0 + 0.06 * _smooth_noise(rng, (1, W), 5)[0])
        thick.append(np.maximum(t, 1.0))
    T = np.stack(thick)  # (n_draw, W)
    # Bruch's membrane (bottom of the RPE) follows the globe: slightly concave-up, tilted, wobbly;
    # the inner retina is stacked on top of it, so the ILM dips into the foveal pit.
    u = (x - W / 2) / (W / 2)
    bm = (
        H * rng.uniform(0.56, 0.62)
        - H * rng.uniform(0.0, 0.06) * u**2
        + H * rng.uniform(-0.04, 0.04) * u
        + 0.006 * H * _smooth_noise(rng, (1, W), 6)[0]
    ).astype(np.float32)
    n_ret = min(7, len(layers))  # RNFL..RPE
    top = bm - T[:n_ret].sum(axis=0)
    bounds = [top] + [top + c for c in np.cumsum(T, axis=0)]
    B = np.stack(bounds)  # (n_draw + 1, W), strictly increasing down each column

    yy = np.arange(H, dtype=np.float32)[:, None] + 0.5
    idx = (yy[None, :, :] >= B[:, None, :]).sum(axis=0)  # 0 above ILM, k inside layer k
    idx = idx.astype(np.int64)
    # brightness per drawn layer (index 0 = vitreous, n_draw + 1 = deep tissue below)
    bright = np.asarray([0.04] + [lay[3] for lay in layers] + [0.12], np.float32)
    jitter = np.concatenate([[1.0], rng.uniform(0.85, 1.15, len(layers)), [1.0]]).astype(np.float32)
    bright = np.clip(bright * jitter, 0, 1)
    inten = bright[idx]
    # soft transitions between layers (the optical axial resolution)
    inten = _blur(inten.astype(np.float32), max(0.6, H / 300.0))
    # choroid / deep tissue fades with depth (signal attenuation)
    depth_below = np.clip((yy - B[-2][None, :]) / (0.25 * H), 0, None)
    inten = inten * np.exp(-1.2 * depth_below)
    # horizontal texture (fibres) + smooth vignetting
    inten = inten * (1.0 + 0.08 * _smooth_noise(rng, (H, W), 20)) * (1.0 + 0.05 * _smooth_noise(rng, (H, W), 3))
    img = 220.0 * inten
    if noise > 0:
        # speckle: fully developed -> exponential intensity, slightly correlated laterally, then log-like
        sp = rng.exponential(1.0, (H, W)).astype(np.float32)
        sp = _blur(sp, (0.5, 0.9))
        mix = min(1.0, 0.55 * noise)
        img = img * ((1.0 - mix) + mix * sp / sp.mean())
        img = img + rng.normal(0.0, 5.0 * noise, (H, W)).astype(np.float32) + 6.0
    out = _to_uint8(img)
    mask = np.where(idx <= K, idx, 0).astype(np.uint8)
    id2label = {0: "background"}
    for k in range(1, K + 1):
        id2label[k] = layers[k - 1][0]
    return SyntheticSample(
        image=out,
        mask=mask,
        fov=None,
        id2label=id2label,
        modality="oct",
        id=f"oct_s{seed}",
        seed=int(seed),
        meta={"boundaries": B[: K + 1].astype(np.float32), "fovea_x": float(xf)},
    )


# --------------------------------------------------------------------------------------------------
# Collections, datasets, folders
# --------------------------------------------------------------------------------------------------
_KIND_ALIASES = {
    "fundus": "fundus",
    "cfp": "fundus",
    "color_fundus": "fundus",
    "octa": "octa",
    "oct": "oct",
    "oct_bscan": "oct",
    "bscan": "oct",
}


def make_samples(
    kind: str = "fundus",
    n: int = 1,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    **kwargs: Any,
) -> list[SyntheticSample]:
    """Generate ``n`` samples of one ``kind`` (``"fundus"``, ``"octa"`` or ``"oct"``).

    Sample ``i`` uses the seed :func:`derive_seed(seed, i) <derive_seed>`; its ``id`` is
    ``f"{kind}_{seed}_{i:04d}"``. Extra keyword arguments go to the generator.
    """
    k = _KIND_ALIASES.get(str(kind).lower())
    if k is None:
        raise LoSamValueError(f"unknown synthetic kind {kind!r}; expected one of {SYNTHETIC_KINDS}")
    gen = {"fundus": fundus, "octa": octa, "oct": oct_bscan}[k]
    if k != "oct" and not isinstance(size, (int, np.integer)):
        if size[0] != size[1]:
            raise LoSamValueError(f"{k} images are square; got size={size}")
        size = int(size[0])
    out = []
    for i in range(int(n)):
        s = gen(size, derive_seed(seed, i), **kwargs)
        s.id = f"{k}_{seed}_{i:04d}"
        out.append(s)
    return out


def to_dataset(samples: Sequence[SyntheticSample]):
    """Turn samples into a ``datasets.Dataset``.

    Columns (same schema as the real dataset loaders):

    * ``image``: ``datasets.Image`` (RGB for fundus, L for OCTA / OCT),
    * ``label``: ``datasets.Image``, single channel (mode ``L``) holding class ids,
    * ``fov``: ``datasets.Image`` (mode ``L``, 0/255, 255 = inside) or ``None`` per row,
    * ``id``: ``str``.

    Label names travel in ``dataset.info.description`` as JSON:
    ``{"id2label": {"0": "background", ...}, "modality": ..., "source": "losam_peft.data.synthetic"}``;
    read them back with :func:`id2label_from_dataset`. All samples must share one ``id2label``.
    """
    import datasets  # lazy: heavy import

    samples = list(samples)
    if not samples:
        raise LoSamValueError("to_dataset needs at least one sample")
    id2label = samples[0].id2label
    for s in samples[1:]:
        if s.id2label != id2label:
            raise LoSamValueError("all samples must share the same id2label")
    modalities = sorted({s.modality for s in samples})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Image(),
            "fov": datasets.Image(),
            "id": datasets.Value("string"),
        }
    )
    data = {
        "image": [s.to_pil() for s in samples],
        "label": [s.mask_pil() for s in samples],
        "fov": [s.fov_pil() for s in samples],
        "id": [s.id or f"{s.modality}_{i:04d}" for i, s in enumerate(samples)],
    }
    description = json.dumps(
        {
            "id2label": {str(k): v for k, v in sorted(id2label.items())},
            "modality": modalities[0] if len(modalities) == 1 else modalities,
            "source": "losam_peft.data.synthetic",
        }
    )
    info = datasets.DatasetInfo(description=description, features=features)
    return datasets.Dataset.from_dict(data, features=features, info=info)


def id2label_from_dataset(ds: Any) -> dict[int, str] | None:
    """Read ``id2label`` from a dataset made by :func:`to_dataset` (``None`` if absent)."""
    desc = getattr(getattr(ds, "info", None), "description", None)
    if not desc:
        return None
    try:
        meta = json.loads(desc)
    except (TypeError, ValueError):
        return None
    if not isinstance(meta, dict) or "id2label" not in meta:
        return None
    return {int(k): str(v) for k, v in meta["id2label"].items()}


def save_folder(
    samples: Sequence[SyntheticSample],
    root: str | os.PathLike,
    *,
    write_fov: bool = False,
) -> list[str]:
    """Write ``root/images/NAME.png`` and ``root/masks/NAME.png`` for every sample.

    Binary masks are written 0/255, multi-class masks as class ids. ``root/id2label.json`` holds the
    label names of the first sample. With ``write_fov`` the FOV masks go to ``root/fov/NAME.png``
    (0/255). ``NAME`` is the sample ``id`` (``sample_{i:04d}`` when empty). Returns the names written.
    """
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    names = []
    for i, s in enumerate(samples):
        name = s.id or f"sample_{i:04d}"
        s.to_pil().save(os.path.join(root, "images", f"{name}.png"))
        s.mask_pil(binary_as_255=True).save(os.path.join(root, "masks", f"{name}.png"))
        if write_fov and s.fov is not None:
            os.makedirs(os.path.join(root, "fov"), exist_ok=True)
            s.fov_pil().save(os.path.join(root, "fov", f"{name}.png"))
        names.append(name)
    if samples:
        with open(os.path.join(root, "id2label.json"), "w") as f:
            json.dump({str(k): v for k, v in sorted(samples[0].id2label.items())}, f, indent=1)
    return names
