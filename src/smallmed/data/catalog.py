"""Known datasets: file names, official download addresses and checksums, class names.

MedMNIST v2 / MedMNIST+ files live on Zenodo record 10519652 (CC BY 4.0); the MD5 sums are the
ones published in the ``medmnist`` package's ``info.py``. Sizes other than 28 are the MedMNIST+
files ``<name>_<size>.npz``.
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


MEDMNIST: dict[str, MedMNISTInfo] = {
    "pneumoniamnist": MedMNISTInfo(
        "binary",
        ("normal", "pneumonia"),
        {28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
         128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"},
    ),
    "retinamnist": MedMNISTInfo(
        "multiclass",
        ("grade 0", "grade 1", "grade 2", "grade 3", "grade 4"),
        {28: "bd4c0672f1bba3e3a89f0e4e876791e4", 64: "afda852cc34dcda56f86ad2b2457dbcc",
         128: "e48e916a24454daf90583d4e6efb1a18", 224: "eae7e3b6f3fcbda4ae613ebdcbe35348"},
    ),
    "breastmnist": MedMNISTInfo(
        "binary",
        ("malignant", "normal, benign"),
        {28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364",
         128: "363e4b3f8d712e9b5de15470a2aaadf1", 224: "b56378a6eefa9fed602bb16d192d4c8b"},
    ),
    "bloodmnist": MedMNISTInfo(
        "multiclass",
        ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
         "monocyte", "neutrophil", "platelet"),
        {28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
         128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"},
    ),
    "pathmnist": MedMNISTInfo(
        "multiclass",
        ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
         "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
        {28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616",
         128: "ac42d08fb904d92c244187169d1fd1d9", 224: "2c51a510bcdc9cf8ddb2af93af1eadec"},
    ),
    "octmnist": MedMNISTInfo(
        "multiclass",
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        {28: "c68d92d5b585d8d81f7112f81e2d0842", 64: "e229e9440236b774d9f0dfef9d07bdaf",
         128: "0a97e76651ace45c5d943ee3f65b63ae", 224: "abc493b6d529d5de7569faaef2773ba3"},
    ),
}

# Real data gathered for this project that has no public single-file download: these names
# resolve only where the files already are (SMALLMED_DATA_DIR, e.g. ../shared/data).
LOCAL_ONLY: dict[str, str] = {
    "covid-ieee8023": "covid_chestxray_ieee8023_224.npz",
    "rsna-boneage": "rsna_boneage_hands_100px.npz",
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
