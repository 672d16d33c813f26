"""Write small DICOM whole-slide images (VL Whole Slide Microscopy, TILED_FULL) for tests.

One instance per pyramid level plus optional label and overview instances,
all of one series in one folder, as scanners export them. Frames are encoded
with highdicom (JPEG baseline, YBR_FULL_422) or stored uncompressed (RGB, or
16-bit monochrome for a pixel type napari-hila refuses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from highdicom import UID
from highdicom.frame import encode_frame
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    VLWholeSlideMicroscopyImageStorage,
)

TILE = 256


def _tiles(image: np.ndarray, tile: tuple[int, int]) -> list[np.ndarray]:
    """Row-major (h, w) frames of ``image`` padded to whole tiles (white, as scanners pad)."""
    h, w = image.shape[:2]
    th, tw = tile
    rows, cols = -(-h // th), -(-w // tw)
    padded = np.full((rows * th, cols * tw, *image.shape[2:]), 255, image.dtype)
    padded[:h, :w] = image
    return [
        np.ascontiguousarray(padded[r * th : (r + 1) * th, c * tw : (c + 1) * tw])
        for r in range(rows)
        for c in range(cols)
    ]


def _instance(
    image: np.ndarray,
    *,
    study: dict,
    image_type: str,
    mpp: float,
    number: int,
    jpeg: bool,
) -> Dataset:
    # levels are tiled; label and overview are one frame, as OpenSlide expects them
    tile = (TILE, TILE) if image_type == "VOLUME" else image.shape[:2]
    colour = image.ndim == 3
    bits = image.dtype.itemsize * 8
    ds = Dataset()
    ds.update(study)
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = UID()
    ds.InstanceNumber = number
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "NONE"]
    ds.Manufacturer = "napari-hila tests"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.BurnedInAnnotation = "YES" if image_type == "LABEL" else "NO"
    ds.SpecimenLabelInImage = "YES" if image_type == "LABEL" else "NO"
    ds.VolumetricProperties = "VOLUME"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.Rows, ds.Columns = tile
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = image.shape[:2]
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.SamplesPerPixel = 3 if colour else 1
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0
    ds.ImagedVolumeWidth = image.shape[1] * mpp / 1000
    ds.ImagedVolumeHeight = image.shape[0] * mpp / 1000
    ds.ImagedVolumeDepth = 0.001
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 10.0
    origin.YOffsetInSlideCoordinateSystem = 20.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]  # mm, (row, column)
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    path_item = Dataset()
    path_item.OpticalPathIdentifier = "1"
    illumination = Dataset()
    illumination.CodeValue, illumination.CodingSchemeDesignator = "414298005", "SCT"
    illumination.CodeMeaning = "Full Spectrum"
    path_item.IlluminationColorCodeSequence = [illumination]
    ds.OpticalPathSequence = [path_item]
    frames = _tiles(image, tile)
    ds.NumberOfFrames = len(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if jpeg and colour:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        encoded = [
            encode_frame(f, JPEGBaseline8Bit, 8, 8, "YBR_FULL_422", planar_configuration=0)
            for f in frames
        ]
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
        ds.PixelData = np.stack(frames).tobytes()
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_dicom_wsi(
    folder: Path,
    levels: list[np.ndarray],
    mpp: float,
    *,
    label: np.ndarray | None = None,
    overview: np.ndarray | None = None,
    jpeg: bool = True,
) -> list[Path]:
    """One DICOM file per level (finest first) and per associated image; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study = {
        "StudyInstanceUID": UID(),
        "SeriesInstanceUID": UID(),
        "FrameOfReferenceUID": UID(),
        "PatientName": "Test^Slide",
        "PatientID": "hila-1",
        "StudyID": "1",
        "SeriesNumber": 1,
        "AccessionNumber": "",
        "StudyDate": "20260101",
        "StudyTime": "120000",
        "ReferringPhysicianName": "",
        "PatientBirthDate": "",
        "PatientSex": "",
        "ContainerIdentifier": "hila-slide-1",
        "PositionReferenceIndicator": "SLIDE_CORNER",
    }
    width = levels[0].shape[1]
    items = [("VOLUME", image, mpp * width / image.shape[1]) for image in levels]
    items += [("LABEL", label, mpp * 8)] if label is not None else []
    items += [("OVERVIEW", overview, mpp * 16)] if overview is not None else []
    paths = []
    for number, (kind, image, spacing) in enumerate(items, start=1):
        ds = _instance(image, study=study, image_type=kind, mpp=spacing, number=number, jpeg=jpeg)
        path = folder / f"{number:02d}_{kind.lower()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
