"""Known datasets: file names, official download addresses and checksums, class names.

All twelve 2-D MedMNIST v2 / MedMNIST+ sets (Yang et al. 2023) live on Zenodo record 10519652
(CC BY 4.0; DermaMNIST CC BY-NC 4.0); the MD5 sums are the ones published in the ``medmnist``
3.x package's ``info.py`` for that record. Sizes other than 28 are the MedMNIST+ files
``<name>_<size>.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ZENODO = "https://zenodo.org/records/10519652/files/{file}?download=1"


@dataclass(frozen=True)
class MedMNISTInfo:
    task: str
    labels: tuple[str, ...]
    md5: dict[int, str] = field(default_factory=dict)

    def file(self, name: str, size: int = 28) -> str:
        return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"

    def url(self, name: str, size: int = 28) -> str:
        return ZENODO.format(file=self.file(name, size))


ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)

MEDMNIST: dict[str, MedMNISTInfo] = {
    "pneumoniamnist": MedMNISTInfo(
        "binary",
        ("normal", "pneumonia"),
        {
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
    ),
    "retinamnist": MedMNISTInfo(
        "multiclass",
        ("grade 0", "grade 1", "grade 2", "grade 3", "grade 4"),
        {
            28: "bd4c0672f1bba3e3a89f0e4e876791e4",
            64: "afda852cc34dcda56f86ad2b2457dbcc",
            128: "e48e916a24454daf90583d4e6efb1a18",
            224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
        },
    ),
    "breastmnist": MedMNISTInfo(
        "binary",
        ("malignant", "normal, benign"),
        {
            28: "750601b1f35ba3300ea97c75c52ff8f6",
            64: "742edef2a1fd1524b2efff4bd7ba9364",
            128: "363e4b3f8d712e9b5de15470a2aaadf1",
            224: "b56378a6eefa9fed602bb16d192d4c8b",
        },
    ),
    "bloodmnist": MedMNISTInfo(
        "multiclass",
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        {
            28: "7053d0359d879ad8a5505303e11de1dc",
            64: "2b94928a2ae4916078ca51e05b6b800b",
            128: "adace1e0ed228fccda1f39692059dd4c",
            224: "b718ff6835fcbdb22ba9eacccd7b2601",
        },
    ),
    "pathmnist": MedMNISTInfo(
        "multiclass",
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        {
            28: "a8b06965200029087d5bd730944a56c1",
            64: "55aa9c1e0525abe5a6b9d8343a507616",
            128: "ac42d08fb904d92c244187169d1fd1d9",
            224: "2c51a510bcdc9cf8ddb2af93af1eadec",
        },
    ),
    "octmnist": MedMNISTInfo(
        "multiclass",
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        {
            28: "c68d92d5b585d8d81f7112f81e2d0842",
            64: "e229e9440236b774d9f0dfef9d07bdaf",
            128: "0a97e76651ace45c5d943ee3f65b63ae",
            224: "abc493b6d529d5de7569faaef2773ba3",
        },
    ),
    "chestmnist": MedMNISTInfo(
        "multilabel",  # NIH ChestX-ray14, official patient split, 14 text-mined findings
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        {
            28: "02c8a6516a18b556561a56cbdd36c4a8",
            64: "9de6cd0b934ebb5b7426cfba5efbae16",
            128: "db107e5590b27930b62dbaf558aebee3",
            224: "45bd33e6f06c3e8cdb481c74a89152aa",
        },
    ),
    "dermamnist": MedMNISTInfo(
        "multiclass",
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        {
            28: "0744692d530f8e62ec473284d019b0c7",
            64: "b70a2f5635c6199aeaa28c31d7202e1f",
            128: "2defd784463fa5243564e855ed717de1",
            224: "8974907d8e169bef5f5b96bc506ae45d",
        },
    ),
    "tissuemnist": MedMNISTInfo(
        "multiclass",
        (
            "collecting duct, connecting tubule",
            "distal convoluted tubule",
            "glomerular endothelial cells",
            "interstitial endothelial cells",
            "leukocytes",
            "podocytes",
            "proximal tubule segments",
            "thick ascending limb",
        ),
        {
            28: "ebe78ee8b05294063de985d821c1c34b",
            64: "123ece2eba09d0aa5d698fda57103344",
            128: "61b955355d7425a89687b06cca3ce0c2",
            224: "b077128c4a949f0a4eb01517f9037b9c",
        },
    ),
    "organamnist": MedMNISTInfo(
        "multiclass",
        ORGANS,
        {
            28: "68e3f8846a6bd62f0c9bf841c0d9eacc",
            64: "2dcccc29b88e6da5a01161ef20cda288",
            128: "eeae80d0a227a8d099027e1b3cfd3b60",
            224: "50747347e05c87dd3aaf92c49f9f3170",
        },
    ),
    "organcmnist": MedMNISTInfo(
        "multiclass",
        ORGANS,
        {
            28: "b9ceb9546e10131b32923c5bbeaea2b1",
            64: "3ce34a8724ea6f548e6db4744d03b6a9",
            128: "773c1f009daa3fe5d9a2a201b2a7ed94",
            224: "050f5e875dc056f6768abf94ec9995d1",
        },
    ),
    "organsmnist": MedMNISTInfo(
        "multiclass",
        ORGANS,
        {
            28: "9ab87b696fb54e2a387ebe992d6ed5f1",
            64: "53a6d115339d874c25e309a994ff46d3",
            128: "ded0c5fa01a95dc4978b956f613e9b8e",
            224: "b354719e553fbbb2513d5533f52a4cb1",
        },
    ),
}

# Real data gathered for this project that has no public single-file download: these names
# resolve only where the files already are (SMALLMED_DATA_DIR, e.g. ../shared/data).
LOCAL_ONLY: dict[str, str] = {
    "covid-ieee8023": "covid_chestxray_ieee8023_224.npz",
    "rsna-boneage": "rsna_boneage_hands_100px.npz",
    "rsna-boneage-months": "rsna_boneage_hands_100px.npz",  # the same file, age in months (regression)
    "covid-lungseg": "covid_lungseg_224.npz",  # images + lung masks: smallmed.data.masks
}


def split_name(name: str) -> tuple[str, int]:
    """'pneumoniamnist_64' -> ('pneumoniamnist', 64); 'pneumoniamnist' -> (..., 28)."""
    base, _, size = name.rpartition("_")
    if base in MEDMNIST and size.isdigit():
        return base, int(size)
    return name, 28


def known_names() -> list[str]:
    return sorted([*MEDMNIST, *LOCAL_ONLY])
