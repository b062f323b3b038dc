"""Declarative descriptions of the retinal datasets, as their official downloads unpack.

A :class:`DatasetSpec` says where images, masks and FOVs are, how their names pair and how mask
values map to class ids; :mod:`losam_peft.data.loaders` is the one engine that reads them all.

Matching rules (applied by the engine):

* Paths are matched relative to the *parent* of the root the user gives, so the root's own name is
  part of the path (``OCTA_3M/ProjectionMaps/...`` matches whether the root is ``OCTA_3M`` or the folder
  above it). A directory pattern matches the *end* of a file's directory path, so extra top-level
  folders (``DRIVE/DRIVE/training/...``, ``FIVES A Fundus .../train/...``) are fine.
* All matching is case-insensitive; any image extension is accepted (``.JPG``, ``.tif``, ``.gif``,
  ``.ppm``, ``.ppm.gz``, ``.bmp`` ...); hidden files, ``__MACOSX`` and non-image files are ignored.
* ``Files.dirs`` is a regular expression over the directory path; ``{split}`` stands for the split's
  folder pattern and ``{group}`` for an image name group. For images ``Files.name`` is a regular
  expression over the file stem whose named groups identify the sample; for masks, FOVs and extras it
  is a template filled from those groups (``{stem}`` is the image's stem).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import LoSamTypeError, LoSamValueError

__all__ = [
    "DATASETS",
    "DATASET_GROUPS",
    "DatasetGroup",
    "DatasetSpec",
    "Files",
    "GroupMember",
    "Mask",
]


def _frozen(mapping: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Files:
    """Where one kind of file lives: directory regex + name regex (images) or name template (others)."""

    dirs: str
    name: str


@dataclass(frozen=True)
class Mask:
    """One mask file per image and how its values become class ids.

    ``values=None``: binary mask, foreground becomes ``class_id``. Otherwise ``values`` maps stored
    values (or ``(r, g, b)`` colours) to class ids. ``optional``: a missing file means "no such class"
    (IDRiD lesions, second observers) instead of an error.
    """

    files: Files
    class_id: int = 1
    values: Mapping | None = None
    optional: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as distributed. ``masks`` merge into the ``label`` column, earlier masks winning on
    overlapping pixels; ``extras`` become further label-like image columns (``None`` where absent)."""

    name: str
    title: str
    modality: str
    task: str
    labels: tuple[str, ...]
    images: Files
    masks: tuple[Mask, ...]
    fov: Files | None = None
    derive_fov: bool = False
    extras: Mapping[str, Mask] = field(default_factory=_frozen)
    #: split name -> regex of its folder, substituted for ``{split}`` in ``dirs``
    splits: Mapping[str, str] = field(default_factory=_frozen)
    #: split name -> inclusive range of the numeric ``num`` group (OCTA-500 assigns splits by subject id)
    id_splits: Mapping[str, tuple[int, int]] = field(default_factory=_frozen)
    #: column -> (image-name group, value map or None); values are looked up lower-cased
    metadata: Mapping[str, tuple[str, Mapping | None]] = field(default_factory=_frozen)
    constants: Mapping[str, str] = field(default_factory=_frozen)
    #: every image must have at least one of its mask/extra files (all-optional masks, IDRiD)
    require_any_mask: bool = False
    #: option -> value -> field overrides (``load(name, root, label="faz")``)
    variants: Mapping[str, Mapping[Any, Mapping[str, Any]]] = field(default_factory=_frozen)
    defaults: Mapping[str, Any] = field(default_factory=_frozen)
    #: directory patterns match from the root instead of anywhere below it (the ``folder`` loader)
    anchored: bool = False
    url: str = ""
    license: str = "other"
    license_name: str = ""
    citation: str = ""
    description: str = ""
    layout: str = ""

    @property
    def has_splits(self) -> bool:
        return bool(self.splits or self.id_splits)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.splits or self.id_splits)

    def resolve(self, **options) -> DatasetSpec:
        """The spec with variant options applied (unknown options or values raise ``TypeError``/``ValueError``)."""
        unknown = set(options) - set(self.variants)
        if unknown:
            raise LoSamTypeError(
                f"{self.name}: unknown option(s) {sorted(unknown)}; dataset options are {sorted(self.variants)}"
            )
        spec = self
        for option, choices in self.variants.items():
            value = options.get(option, self.defaults.get(option))
            key = _variant_key(choices, value)
            if key is None:
                raise LoSamValueError(f"{self.name}: {option}={value!r} is not one of {list(choices)}")
            spec = dataclasses.replace(spec, **choices[key])
        return spec


def _variant_key(choices: Mapping, value):
    if value in choices:
        return value
    if isinstance(value, str):
        for key in choices:
            if isinstance(key, str) and key.lower() == value.lower():
                return key
    return None


@dataclass(frozen=True)
class GroupMember:
    """One dataset of a group: registry name, split to use (``None``: the whole dataset), options."""

    name: str
    split: str | None = None
    options: Mapping[str, Any] = field(default_factory=_frozen)


@dataclass(frozen=True)
class DatasetGroup:
    """A zero-shot protocol: one-shot training on ``train``, zero-shot evaluation on each of ``test``."""

    name: str
    description: str
    train: GroupMember
    test: tuple[GroupMember, ...]

    @property
    def members(self) -> tuple[GroupMember, ...]:
        return (self.train, *self.test)


# --------------------------------------------------------------------------------------------------
# Colour fundus, vessels
# --------------------------------------------------------------------------------------------------

_VESSEL = ("background", "vessel")

FIVES = DatasetSpec(
    name="fives",
    title="FIVES",
    modality="colour fundus",
    task="vessel segmentation",
    labels=_VESSEL,
    splits={"train": "train", "test": "test"},
    images=Files(r"{split}/original", r"(?P<num>\d+)_(?P<group>[adgn])"),
    masks=(Mask(Files(r"{split}/ground[ _-]?truths?", "{num}_{group}")),),
    derive_fov=True,
    metadata={"disease": ("group", {"a": "AMD", "d": "diabetic retinopathy", "g": "glaucoma", "n": "normal"})},
    url="https://doi.org/10.6084/m9.figshare.19688169",
    license="cc-by-4.0",
    citation=(
        "@article{jin2022fives,\n  title={FIVES: A Fundus Image Dataset for Artificial Intelligence based Vessel "
        "Segmentation},\n  author={Jin, Kai and Huang, Xingru and Zhou, Jingxing and Li, Yunxiang and Yan, Yan and "
        "Sun, Yibao and Zhang, Qianni and Wang, Yaqi and Ye, Juan},\n  journal={Scientific Data},\n  volume={9},\n  "
        "pages={475},\n  year={2022}\n}"
    ),
    description="800 colour fundus photographs (2048x2048; AMD, diabetic retinopathy, glaucoma, normal) with "
    "pixel-wise vessel annotations; official split 600 train / 200 test.",
    layout="{train,test}/Original/1_A.png and {train,test}/Ground truth/1_A.png",
)

HRF = DatasetSpec(
    name="hrf",
    title="HRF (High-Resolution Fundus)",
    modality="colour fundus",
    task="vessel segmentation",
    labels=_VESSEL,
    images=Files(r"images", r"(?P<num>\d+)_(?P<group>h|dr|g)"),
    masks=(Mask(Files(r"manual1", "{num}_{group}")),),
    fov=Files(r"mask", "{num}_{group}_mask"),
    metadata={"disease": ("group", {"h": "healthy", "dr": "diabetic retinopathy", "g": "glaucoma"})},
    url="https://www5.cs.fau.de/research/data/fundus-images/",
    license="other",
    license_name="HRF terms of use (see source)",
    citation=(
        "@article{budai2013robust,\n  title={Robust Vessel Segmentation in Fundus Images},\n  author={Budai, Attila "
        'and Bock, R{\\"u}diger and Maier, Andreas and Hornegger, Joachim and Michelson, Georg},\n  journal='
        "{International Journal of Biomedical Imaging},\n  volume={2013},\n  pages={154860},\n  year={2013}\n}"
    ),
    description="45 colour fundus photographs (3504x2336): 15 healthy, 15 diabetic retinopathy, 15 glaucoma, "
    "with vessel annotations and FOV masks. No official split.",
    layout="images/01_h.jpg, manual1/01_h.tif, mask/01_h_mask.tif",
)

CHASE_DB1 = DatasetSpec(
    name="chase_db1",
    title="CHASE_DB1",
    modality="colour fundus",
    task="vessel segmentation",
    labels=_VESSEL,
    images=Files(r".*", r"image_(?P<num>\d+)(?P<eye>[lr])"),
    masks=(Mask(Files(r".*", "Image_{num}{eye}_1stHO")),),
    extras={"label_observer2": Mask(Files(r".*", "Image_{num}{eye}_2ndHO"), optional=True)},
    derive_fov=True,
    metadata={"subject": ("num", None), "eye": ("eye", {"l": "left", "r": "right"})},
    url="https://researchdata.kingston.ac.uk/96/",
    license="cc-by-4.0",
    citation=(
        "@article{fraz2012ensemble,\n  title={An Ensemble Classification-Based Approach Applied to Retinal Blood "
        "Vessel Segmentation},\n  author={Fraz, Muhammad Moazam and Remagnino, Paolo and Hoppe, Andreas and "
        "Uyyanonvara, Bunyarit and Rudnicka, Alicja R. and Owen, Christopher G. and Barman, Sarah A.},\n  journal="
        "{IEEE Transactions on Biomedical Engineering},\n  volume={59},\n  number={9},\n  pages={2538--2548},\n  "
        "year={2012}\n}"
    ),
    description="28 colour fundus photographs (999x960) of both eyes of 14 children; vessel annotations by two "
    "observers (first observer is the label, second kept as label_observer2). No official split.",
    layout="Image_01L.jpg, Image_01L_1stHO.png, Image_01L_2ndHO.png (one folder)",
)

DRIVE = DatasetSpec(
    name="drive",
    title="DRIVE",
    modality="colour fundus",
    task="vessel segmentation",
    labels=_VESSEL,
    splits={"train": "training", "test": "test"},
    images=Files(r"{split}/images", r"(?P<num>\d+)_(?P<part>training|test)"),
    masks=(Mask(Files(r"{split}/1st_manual", "{num}_manual1")),),
    fov=Files(r"{split}/mask", "{num}_{part}_mask"),
    extras={"label_observer2": Mask(Files(r"{split}/2nd_manual", "{num}_manual2"), optional=True)},
    url="https://drive.grand-challenge.org/",
    license="other",
    license_name="DRIVE terms of use: research use (see source)",
    citation=(
        "@article{staal2004ridge,\n  title={Ridge-Based Vessel Segmentation in Color Images of the Retina},\n  "
        "author={Staal, Joes and Abr{\\`a}moff, Michael D. and Niemeijer, Meindert and Viergever, Max A. and "
        "van Ginneken, Bram},\n  journal={IEEE Transactions on Medical Imaging},\n  volume={23},\n  number={4},\n  "
        "pages={501--509},\n  year={2004}\n}"
    ),
    description="40 colour fundus photographs (565x584), 20 training / 20 test, with FOV masks; first manual "
    "annotation is the label, the test set's second observer is kept as label_observer2.",
    layout="training/images/21_training.tif, training/1st_manual/21_manual1.gif, training/mask/21_training_mask.gif",
)

# The 20 images of the STARE vessel subset (labels-ah / labels-vk); stare-images.tar holds 400 images.
_STARE_IDS = (
    "0001", "0002", "0003", "0004", "0005", "0044", "0077", "0081", "0082", "0139",
    "0162", "0163", "0235", "0236", "0239", "0240", "0255", "0291", "0319", "0324",
)  # fmt: skip

STARE = DatasetSpec(
    name="stare",
    title="STARE",
    modality="colour fundus",
    task="vessel segmentation",
    labels=_VESSEL,
    images=Files(r".*", r"im(?P<num>" + "|".join(_STARE_IDS) + ")"),
    masks=(Mask(Files(r".*", "im{num}.ah")),),
    extras={"label_observer2": Mask(Files(r".*", "im{num}.vk"), optional=True)},
    derive_fov=True,
    url="https://cecas.clemson.edu/~ahoover/stare/",
    license="other",
    license_name="STARE terms of use (see source)",
    citation=(
        "@article{hoover2000locating,\n  title={Locating Blood Vessels in Retinal Images by Piecewise Threshold "
        "Probing of a Matched Filter Response},\n  author={Hoover, Adam and Kouznetsova, Valentina and Goldbaum, "
        "Michael},\n  journal={IEEE Transactions on Medical Imaging},\n  volume={19},\n  number={3},\n  "
        "pages={203--210},\n  year={2000}\n}"
    ),
    description="20 colour fundus photographs (700x605) with vessel labels by Adam Hoover (the label) and "
    "Valentina Kouznetsova (label_observer2). No official split.",
    layout="stare-images/im0001.ppm(.gz), labels-ah/im0001.ah.ppm(.gz), labels-vk/im0001.vk.ppm(.gz)",
)

# --------------------------------------------------------------------------------------------------
# OCTA, vessels
# --------------------------------------------------------------------------------------------------

_ROSE_CITATION = (
    "@article{ma2021rose,\n  title={ROSE: A Retinal OCT-Angiography Vessel Segmentation Dataset and New Model},\n  "
    "author={Ma, Yuhui and Hao, Huaying and Xie, Jianyang and Fu, Huazhu and Zhang, Jiong and Yang, Jianlong and "
    "Wang, Zhen and Liu, Jiang and Zheng, Yalin and Zhao, Yitian},\n  journal={IEEE Transactions on Medical "
    "Imaging},\n  volume={40},\n  number={3},\n  pages={928--939},\n  year={2021}\n}"
)


def _rose1_subset(subset: str) -> dict:
    base = rf"{subset}/{{split}}"
    return {
        "images": Files(rf"{base}/img", r".+"),
        "masks": (Mask(Files(rf"{base}/gt", "{stem}")),),
        "extras": _frozen(
            {
                "label_thick": Mask(Files(rf"{base}/thick_gt", "{stem}"), optional=True),
                "label_thin": Mask(Files(rf"{base}/thin_gt", "{stem}"), optional=True),
            }
        ),
        "constants": _frozen({"device": "Optovue RTVue XR Avanti", "plexus": subset}),
    }


ROSE1 = DatasetSpec(
    name="rose1",
    title="ROSE-1",
    modality="OCTA",
    task="vessel segmentation",
    labels=_VESSEL,
    splits={"train": "train", "test": "test"},
    **_rose1_subset("SVC"),
    variants={"subset": {s: _rose1_subset(s) for s in ("SVC", "DVC", "SVC_DVC")}},
    defaults={"subset": "SVC"},
    url="https://imed.nimte.ac.cn/dataofrose.html",
    license="other",
    license_name="ROSE terms of use: academic research only (see source)",
    citation=_ROSE_CITATION,
    description="39 OCTA en-face images (304x304) of the superficial (SVC), deep (DVC) and combined (SVC_DVC) "
    "plexus, 30 train / 9 test; choose the plexus with subset=. thick_gt/thin_gt are kept where shipped.",
    layout="ROSE-1/SVC/{train,test}/img/01.tif and ROSE-1/SVC/{train,test}/gt/01.tif (also DVC, SVC_DVC)",
)

ROSE2 = DatasetSpec(
    name="rose2",
    title="ROSE-2",
    modality="OCTA",
    task="vessel segmentation",
    labels=_VESSEL,
    splits={"train": "train", "test": "test"},
    images=Files(r"{split}/original", r".+"),
    masks=(Mask(Files(r"{split}/gt", "{stem}")),),
    constants={"device": "Heidelberg Spectralis OCT2"},
    url="https://imed.nimte.ac.cn/dataofrose.html",
    license="other",
    license_name="ROSE terms of use: academic research only (see source)",
    citation=_ROSE_CITATION,
    description="112 OCTA en-face images (840x840) of the superficial plexus, 90 train / 22 test.",
    layout="ROSE-2/{train,test}/original/*.png and ROSE-2/{train,test}/gt/*.png",
)

_OCTA500_CITATION = (
    "@article{li2024octa500,\n  title={OCTA-500: A Retinal Dataset for Optical Coherence Tomography Angiography "
    "Study},\n  author={Li, Mingchao and Huang, Kun and Xu, Qiuzhuo and Yang, Jiadong and Zhang, Yuhan and Ji, "
    "Zexuan and Xie, Keren and Yuan, Songtao and Liu, Qinghuai and Chen, Qiang},\n  journal={Medical Image "
    "Analysis},\n  volume={93},\n  pages={103092},\n  year={2024}\n}\n"
    "@article{li2020ipn,\n  title={Image Projection Network: 3D to 2D Image Segmentation in OCTA Images},\n  "
    "author={Li, Mingchao and Chen, Yerui and Ji, Zexuan and Xie, Keren and Yuan, Songtao and Chen, Qiang and Li, "
    "Shuo},\n  journal={IEEE Transactions on Medical Imaging},\n  volume={39},\n  number={11},\n  "
    "pages={3343--3354},\n  year={2020}\n}"
)

_OCTA500_PROJECTIONS = ("FULL", "ILM_OPL", "OPL_BM")


def _octa500(fov: str, id_splits: dict, n_subjects: int, size: int) -> DatasetSpec:
    subset = rf"octa[_ -]?{fov}"
    gt = rf"{subset}/(?:.*/)?gt_{{}}"

    def projection(kind: str, layer: str) -> dict:
        return {"images": Files(rf"{subset}/(?:.*/)?projectionmaps/{kind}\({layer}\)", r"(?P<num>\d+)")}

    projections = {p: projection("octa", p) for p in _OCTA500_PROJECTIONS}
    projections.update({f"OCT_{p}": projection("oct", p) for p in _OCTA500_PROJECTIONS})

    def single(folder: str, label: str) -> dict:
        return {"masks": (Mask(Files(gt.format(folder), "{num}")),), "labels": ("background", label)}

    labels = {
        "large_vessel": single("largevessel", "vessel"),
        "capillary": single("capillary", "capillary"),
        "faz": single("faz", "FAZ"),
        # artery and vein masks merged; crossing pixels go to the artery (listed first)
        "artery_vein": {
            "masks": (
                Mask(Files(gt.format("artery"), "{num}"), class_id=1),
                Mask(Files(gt.format("vein"), "{num}"), class_id=2),
            ),
            "labels": ("background", "artery", "vein"),
        },
    }
    return DatasetSpec(
        name=f"octa500_{fov.lower()}",
        title=f"OCTA-500 (OCTA_{fov})",
        modality="OCTA",
        task="vessel segmentation",
        labels=_VESSEL,
        id_splits=id_splits,
        **projections["FULL"],
        masks=labels["large_vessel"]["masks"],
        constants={"device": "Optovue RTVue-XR", "scan_size": f"{fov[0]}x{fov[0]} mm"},
        variants={"label": labels, "projection": projections},
        defaults={"label": "large_vessel", "projection": "FULL"},
        url="https://ieee-dataport.org/open-access/octa-500",
        license="other",
        license_name="OCTA-500 terms of use (see source)",
        citation=_OCTA500_CITATION,
        description=f"OCTA_{fov} subset of OCTA-500: {n_subjects} subjects, {size}x{size} projection maps "
        "(projection=FULL|ILM_OPL|OPL_BM|OCT_FULL|...), labels label=large_vessel (default)|capillary|artery_vein|faz; "
        "official train/validation/test split by subject id.",
        layout=f"OCTA_{fov}/ProjectionMaps/OCTA(FULL)/<id>.bmp and OCTA_{fov}/GT_LargeVessel/<id>.bmp",
    )


OCTA500_3M = _octa500("3M", {"train": (10301, 10440), "validation": (10441, 10450), "test": (10451, 10500)}, 200, 304)
OCTA500_6M = _octa500("6M", {"train": (10001, 10180), "validation": (10181, 10200), "test": (10201, 10300)}, 300, 400)

# --------------------------------------------------------------------------------------------------
# Lesions (IDRiD) and OCT layers (AROI)
# --------------------------------------------------------------------------------------------------

_IDRID_GT = r"(?:\d+\. ?)?all segmentation groundtruths/{{split}}/(?:\d+\. ?)?{}"
_IDRID_LESIONS = (
    ("microaneurysm", "microaneurysms?", "MA"),
    ("haemorrhage", "ha?emorrhages?", "HE"),
    ("hard exudate", "hard exudates?", "EX"),
    ("soft exudate", "soft exudates?", "SE"),
)
_IDRID_MASKS = tuple(
    Mask(Files(_IDRID_GT.format(folder), f"IDRiD_{{num}}_{code}"), class_id=i, optional=True)
    for i, (_, folder, code) in enumerate(_IDRID_LESIONS, start=1)
)
_IDRID_OD_FILES = Files(_IDRID_GT.format("optic discs?"), "IDRiD_{num}_OD")
_IDRID_OD = Mask(_IDRID_OD_FILES, class_id=5, optional=True)
_IDRID_LABELS = ("background", *(name for name, _, _ in _IDRID_LESIONS))

IDRID = DatasetSpec(
    name="idrid",
    title="IDRiD (segmentation part)",
    modality="colour fundus",
    task="lesion segmentation",
    labels=_IDRID_LABELS,
    splits={"train": r"(?:a\. ?)?training ?set", "test": r"(?:b\. ?)?testing ?set"},
    images=Files(r"(?:\d+\. ?)?original images/{split}", r"idrid_(?P<num>\d+)"),
    masks=_IDRID_MASKS,
    extras={"optic_disc": Mask(_IDRID_OD_FILES, optional=True)},  # 0/1 column unless it is class 5
    derive_fov=True,
    require_any_mask=True,
    variants={
        "include_optic_disc": {
            False: {},
            True: {"masks": (*_IDRID_MASKS, _IDRID_OD), "labels": (*_IDRID_LABELS, "optic disc"), "extras": _frozen()},
        }
    },
    defaults={"include_optic_disc": False},
    url="https://idrid.grand-challenge.org/",
    license="cc-by-4.0",
    citation=(
        "@article{porwal2018idrid,\n  title={Indian Diabetic Retinopathy Image Dataset (IDRiD): A Database for "
        "Diabetic Retinopathy Screening Research},\n  author={Porwal, Prasanna and Pachade, Samiksha and Kamble, "
        "Ravi and Kokare, Manesh and Deshmukh, Girish and Sahasrabudhe, Vivek and Meriaudeau, Fabrice},\n  "
        "journal={Data},\n  volume={3},\n  number={3},\n  pages={25},\n  year={2018}\n}"
    ),
    description="81 colour fundus photographs (4288x2848), 54 train / 27 test, one binary mask per lesion type. "
    "Classes 1-4 = MA, HE, EX, SE (5 = optic disc with include_optic_disc=True, otherwise kept as the optic_disc "
    "column). A missing lesion file means no such lesion. Overlapping pixels go to the lowest class id "
    "(priority MA > HE > EX > SE > optic disc), so small lesions are never painted over.",
    layout="A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg and A. Segmentation/"
    "2. All Segmentation Groundtruths/a. Training Set/1. Microaneurysms/IDRiD_01_MA.tif",
)

AROI = DatasetSpec(
    name="aroi",
    title="AROI",
    modality="OCT",
    task="retinal layer and fluid segmentation",
    labels=(
        "background (above ILM)",
        "ILM-IPL/INL",
        "IPL/INL-RPE",
        "RPE-BM",
        "under BM",
        "PED",
        "SRF",
        "IRF",
    ),  # fmt: skip
    images=Files(r"patient(?P<patient>\d+)/raw/labeled", r"patient\d+_raw(?P<scan>\d+)"),
    masks=(Mask(Files(r"patient{patient}/mask/number", "{stem}"), values={i: i for i in range(8)}),),
    metadata={"patient": ("patient", None), "bscan": ("scan", None)},
    url="https://ipg.fer.hr/ipg/resources/oct_image_database",
    license="other",
    license_name="AROI terms of use: research and education, on request (see source)",
    citation=(
        "@article{melinscak2021aroi,\n  title={Annotated Retinal Optical Coherence Tomography Images (AROI) "
        "Database for Joint Retinal Layer and Fluid Segmentation},\n  author={Melin{\\v{s}}{\\v{c}}ak, Martina and "
        "Radmilovi{\\'c}, Marin and Vatavuk, Zoran and Lon{\\v{c}}ari{\\'c}, Sven},\n  journal={Automatika},\n  "
        "volume={62},\n  number={3-4},\n  pages={375--385},\n  year={2021}\n}"
    ),
    description="1136 annotated OCT B-scans of 24 AMD patients; mask values 0-7 are the dataset's own classes "
    "(0 above ILM, 1 ILM-IPL/INL, 2 IPL/INL-RPE, 3 RPE-BM, 4 under BM, 5 PED, 6 SRF, 7 IRF). No official split.",
    layout="24 patient/patient1/raw/labeled/patient1_raw0040.png and 24 patient/patient1/mask/number/"
    "patient1_raw0040.png",
)

#: Every dataset ``load`` knows by name (``folder`` is built from its arguments, see ``loaders.folder``).
DATASETS: Mapping[str, DatasetSpec] = _frozen(
    {s.name: s for s in (FIVES, HRF, CHASE_DB1, DRIVE, STARE, ROSE1, ROSE2, OCTA500_3M, OCTA500_6M, IDRID, AROI)}
)

#: The paper's zero-shot protocol (Table 2): one-shot training on ``train``, evaluation on each ``test``
#: member. Official test splits are used where a dataset has one, the whole dataset otherwise.
DATASET_GROUPS: Mapping[str, DatasetGroup] = _frozen(
    {
        "fundus_vessels": DatasetGroup(
            name="fundus_vessels",
            description="colour fundus vessels: train on FIVES, test on HRF, CHASE_DB1, DRIVE and STARE",
            train=GroupMember("fives", "train"),
            test=(
                GroupMember("hrf"),
                GroupMember("chase_db1"),
                GroupMember("drive", "test"),
                GroupMember("stare"),
            ),
        ),
        "octa_vessels": DatasetGroup(
            name="octa_vessels",
            description="OCTA vessels: train on ROSE-1 (SVC), test on ROSE-2, OCTA-500 3M and 6M (large vessels)",
            train=GroupMember("rose1", "train", _frozen({"subset": "SVC"})),
            test=(
                GroupMember("rose2", "test"),
                GroupMember("octa500_3m", "test", _frozen({"label": "large_vessel"})),
                GroupMember("octa500_6m", "test", _frozen({"label": "large_vessel"})),
            ),
        ),
    }
)
