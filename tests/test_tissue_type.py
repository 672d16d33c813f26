"""The model's tissue type beside the organ the slide file records (issue 13, item 12)."""

from __future__ import annotations

from napari_hila.tissue_type import check_tissue_type, model_organ, organ_of, recorded_organ

# OpenSlide's properties of a DICOM WSI with Body Part Examined (as tests/_dicom_wsi.py
# writes them) and of the bundled Aperio sample (which records no organ)
DICOM_SKIN = {
    "dicom.BodyPartExamined": "SKIN",
    "dicom.ContainerIdentifier": "hila-slide-1",
    "dicom.SpecimenLabelInImage": "NO",
}
APERIO = {
    "aperio.Filename": "CMU-1",
    "aperio.AppMag": "20",
    "tiff.ImageDescription": "Aperio Image Library v10.0.50|AppMag = 20|Filename = CMU-1|"
    "User = b414003d|Parmset = USM Filter|MPP = 0.4990",
}


def test_organ_words_and_cancer_types():
    assert organ_of("BREAST") == "breast"
    assert organ_of("Urinary bladder, urothelium") == "bladder"
    assert organ_of("rectangular scan area") is None  # "rect" is not the rectum
    assert organ_of("left lung, then kidney") == "lung"  # the first named
    assert model_organ("BRCA") == "breast" and model_organ("luad") == "lung"
    assert model_organ("synthetic (demo)", "DEMO") is None
    assert model_organ(None, "KIRC") == "kidney"


def test_breast_model_on_a_skin_slide_warns_naming_the_field():
    check = check_tissue_type("BRCA", "BRCA", DICOM_SKIN)
    assert check.expected == "breast" and check.found == "skin" and check.disagrees
    warning = check.warning()
    assert "for breast" in warning and "dicom.BodyPartExamined: SKIN" in warning
    assert "records skin" in check.html()


def test_agreeing_and_silent_files():
    same = check_tissue_type("BRCA", "BRCA", {**DICOM_SKIN, "dicom.BodyPartExamined": "BREAST"})
    assert not same.disagrees and same.warning() is None and "records breast" in same.html()
    # the Aperio sample records no organ: the set is shown, and the file said nothing
    silent = check_tissue_type("BRCA", "BRCA", APERIO)
    assert recorded_organ(APERIO) is None and silent.warning() is None
    assert (
        silent.html() == "Model and prompts for BRCA (breast); the file does not record the organ"
    )
    # a specimen description in words the list does not know: quoted, no verdict
    odd = check_tissue_type(
        "BRCA", "BRCA", {"dicom.SpecimenDescriptionSequence[0].SpecimenShortDescription": "T-1"}
    )
    assert odd.found is None and not odd.disagrees and "'T-1'" in odd.html()
    # the demo model: its own words, the prompt set named, nothing to compare
    demo = check_tissue_type("synthetic (demo)", "DEMO", DICOM_SKIN)
    assert demo.expected is None and not demo.disagrees
    assert demo.html().startswith("Model and prompts for synthetic (demo), prompt set DEMO;")
