"""Folders, CSV manifests, DICOM, transforms and downloads."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from smallmed import SmallmedError, load_dataset
from smallmed.data import build_transform, catalog, fetch, load_csv, load_folder, parse_augment, read_image
from smallmed.data.transforms import PerSampleStandardize
from tests.conftest import make_images


def _write_pngs(root, n_per_class=6, size=12, fmt="png"):
    for k, name in enumerate(["normal", "sick"]):
        (root / name).mkdir(parents=True)
        imgs = make_images(np.full(n_per_class, k), size, 1, seed=k)
        for i, im in enumerate(imgs):
            Image.fromarray(im[..., 0]).save(root / name / f"{i}.{fmt}")


def test_folder_of_classes(tmp_path):
    _write_pngs(tmp_path / "data", n_per_class=10)
    ds = load_folder(tmp_path / "data")
    assert ds.class_names == ["normal", "sick"] and ds.in_chans == 1
    assert sum(len(s) for s in ds.splits.values()) == 20


def test_folder_with_split_subfolders_and_jpeg(tmp_path):
    for split in ("train", "val", "test"):
        _write_pngs(tmp_path / "d" / split, n_per_class=2, fmt="jpg")
    ds = load_folder(tmp_path / "d", image_size=8)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [4, 4, 4]
    assert ds.image_size == 8


def test_folder_rejects_non_image_and_unreadable(tmp_path):
    _write_pngs(tmp_path / "d")
    (tmp_path / "d" / "sick" / "notes.txt").write_text("hello")
    with pytest.raises(SmallmedError, match="notes.txt: not an image file"):
        load_folder(tmp_path / "d")
    (tmp_path / "d" / "sick" / "notes.txt").unlink()
    (tmp_path / "d" / "sick" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(SmallmedError, match="broken.png: not a readable image"):
        load_folder(tmp_path / "d")


def test_csv_manifest_with_patients_and_16bit_tiff(tmp_path):
    rows = ["path,label,patient_id"]
    for i in range(30):
        arr = (np.random.default_rng(i).integers(0, 4000, (10, 10))).astype(np.uint16)
        Image.fromarray(arr).save(tmp_path / f"im{i}.tif")
        rows.append(f"im{i}.tif,{'covid' if i % 3 == 0 else 'other'},P{i // 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows))
    ds = load_csv(tmp_path / "m.csv")
    assert ds.class_names == ["covid", "other"]
    train_p, test_p = set(ds.splits["train"].patient_ids), set(ds.splits["test"].patient_ids)
    assert not train_p & test_p
    img = ds.splits["train"].images[0]
    assert img.dtype == np.uint8 and img.max() == 255 and img.min() == 0  # 16-bit scaled by min-max


def test_csv_errors(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.png,1\n")
    with pytest.raises(SmallmedError, match="missing column.*path"):
        load_csv(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,label\nmissing.png,1\n")
    with pytest.raises(SmallmedError, match="missing.png: file not found"):
        load_csv(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("path,label,split\n")
    with pytest.raises(SmallmedError, match="no rows"):
        load_csv(tmp_path / "c.csv")


def _dicom(path, arr, photometric="MONOCHROME2", slope=1.0, intercept=0.0, pixels=True, extra=None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixels:
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = arr.astype(np.uint16).tobytes()
    if extra:
        extra(ds)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_rescale_and_monochrome1(tmp_path):
    arr = np.tile(np.arange(0, 4000, 500, dtype=np.uint16), (8, 1))  # dark left, bright right
    m2 = read_image(_dicom(tmp_path / "a.dcm", arr))[..., 0]
    m1 = read_image(_dicom(tmp_path / "b.dcm", arr, "MONOCHROME1"))[..., 0]
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    assert m1[0, 0] == 255 and m1[0, -1] == 0  # MONOCHROME1: high values are dark
    scaled = read_image(_dicom(tmp_path / "c.dcm", arr, slope=-1.0, intercept=100.0))[..., 0]
    assert scaled[0, 0] == 255 and scaled[0, -1] == 0  # the negative slope reverses the order


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    arr = np.array([[0, 1, 2, 3]], dtype=np.uint16).repeat(4, 0)

    def lut(ds):  # an 8-bit VOI LUT that maps 0..3 to 0, 255, 64, 128: no window could do this
        item = Dataset()
        item.LUTDescriptor = [4, 0, 8]
        item.add_new(0x00283006, "US", [0, 255, 64, 128])  # LUT Data
        ds.VOILUTSequence = Sequence([item])
        ds.WindowCenter, ds.WindowWidth = 1000, 10  # ignored: the LUT wins, as in pydicom

    out = read_image(_dicom(tmp_path / "lut.dcm", arr, extra=lut))[0, :, 0]
    assert out.tolist() == [0, 255, 64, 128]


def test_dicom_linear_and_sigmoid_windows(tmp_path):
    arr = np.array([[0, 1000, 2000, 3000, 4000]], dtype=np.uint16).repeat(4, 0)

    def window(fn):
        def f(ds):
            ds.WindowCenter, ds.WindowWidth = 2000, 2000
            if fn:
                ds.VOILUTFunction = fn

        return f

    linear = read_image(_dicom(tmp_path / "w.dcm", arr, extra=window(None)))[0, :, 0]
    assert linear[0] == linear[1] == 0 and linear[3] >= 254 and linear[4] == 255 and 120 <= linear[2] <= 135
    sig = read_image(_dicom(tmp_path / "s.dcm", arr, extra=window("SIGMOID")))[0, :, 0]
    # the SIGMOID VOI function: 4095 / (1 + exp(-4 (x - c) / w)), scaled to 0-255
    expect = 255 / (1 + np.exp(-4 * (np.array([0, 1000, 2000, 3000, 4000]) - 2000) / 2000))
    assert np.abs(sig.astype(float) - expect).max() <= 1.0


def test_dicom_without_pixels(tmp_path):
    path = _dicom(tmp_path / "empty.dcm", np.zeros((4, 4)), pixels=False)
    with pytest.raises(SmallmedError, match="empty.dcm: DICOM file has no pixel data"):
        read_image(path)


def test_augment_specs():
    assert parse_augment("seed000").scale == (0.8, 1.2) and parse_augment("seed000").hflip
    cfg = parse_augment("hflip,scale=0.9-1.1,rotate=15,blur=0.5")
    assert cfg.rotate == 15 and cfg.blur_p == 0.5 and cfg.scale == (0.9, 1.1)
    with pytest.raises(SmallmedError, match="Did you mean 'rotate'"):
        parse_augment("rotat=3")
    with pytest.raises(SmallmedError, match="scale=.*0 < lo <= hi"):
        parse_augment("scale=1.2-0.8")


def test_transform_shapes_channels_and_normalisation():
    x = torch.randint(0, 255, (1, 28, 28), dtype=torch.uint8)
    tf = build_transform(train=True, image_size=64, channels=3, augment="ra2", normalize="half")
    out = tf(tv_tensors.Image(x))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    ev = build_transform(train=False, image_size=28, channels=1, normalize="dataset", mean=(0.5,), std=(0.25,))
    assert torch.allclose(ev(tv_tensors.Image(x)), (x.float() / 255 - 0.5) / 0.25, atol=1e-5)
    s = PerSampleStandardize()(torch.rand(1, 8, 8) * 5 + 3)
    assert abs(s.mean().item()) < 1e-5 and abs(s.std().item() - 1) < 1e-3


def test_image_and_mask_get_the_same_geometry():
    img = torch.zeros(1, 32, 32, dtype=torch.uint8)
    img[:, 4:12, 4:12] = 255
    mask = tv_tensors.Mask((img > 0).to(torch.uint8))
    tf = build_transform(
        train=True, image_size=32, channels=1, augment="hflip,rotate=30,scale=0.8-1.2", normalize="none"
    )
    for seed in range(5):
        torch.manual_seed(seed)
        out_img, out_mask = tf(tv_tensors.Image(img), mask)
        assert out_mask.dtype == torch.uint8  # masks are not rescaled to float
        bright = out_img[0] > 0.5
        assert (bright & (out_mask[0] == 0)).sum() <= 0.15 * bright.sum().clamp(min=1)


# --- downloads, served from 127.0.0.1 -------------------------------------------------------


@pytest.fixture
def local_server(http_root):
    root, base = http_root
    return root, base + "{file}"


def test_fetch_verifies_md5(local_server, tmp_path, monkeypatch):
    served, url = local_server
    payload = b"pretend npz bytes" * 1000
    (served / "breastmnist.npz").write_bytes(payload)
    good = hashlib.md5(payload).hexdigest()
    info = catalog.MedMNISTInfo("binary", ("a", "b"), {28: good})
    monkeypatch.setitem(catalog.MEDMNIST, "breastmnist", info)
    monkeypatch.setattr(catalog, "ZENODO", url)
    out = fetch("breastmnist", dest=tmp_path / "cache", progress=False)
    assert out.read_bytes() == payload
    assert fetch("breastmnist", dest=tmp_path / "cache", progress=False) == out  # verified, not re-downloaded

    bad = catalog.MedMNISTInfo("binary", ("a", "b"), {28: "0" * 32})
    monkeypatch.setitem(catalog.MEDMNIST, "breastmnist", bad)
    with pytest.raises(SmallmedError, match="MD5 .* expected 0{32}; nothing was saved"):
        fetch("breastmnist", dest=tmp_path / "other", progress=False)
    assert list((tmp_path / "other").iterdir()) == []  # no partial file left behind


def test_fetch_unknown_name_and_offline(tmp_path, monkeypatch):
    with pytest.raises(SmallmedError, match="known MedMNIST names"):
        fetch("cifar10", dest=tmp_path)
    with pytest.raises(SmallmedError, match=r"SMALLMED_OFFLINE is set.*place the file at .*retinamnist.npz"):
        fetch("retinamnist", dest=tmp_path, progress=False)
    monkeypatch.delenv("SMALLMED_OFFLINE")

    def offline(url, timeout):
        raise OSError("network unreachable")

    with pytest.raises(SmallmedError, match="Could not download https://zenodo.org"):
        fetch("retinamnist", dest=tmp_path, opener=offline, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_dispatch(tmp_path):
    _write_pngs(tmp_path / "d", n_per_class=10)
    assert load_dataset(tmp_path / "d").num_classes == 2
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(SmallmedError, match="unsupported data"):
        load_dataset(tmp_path / "x.txt")
