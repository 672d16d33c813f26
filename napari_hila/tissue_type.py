"""Does the slide come from the organ the model and its prompts are for? What the file says.

A model's card names its cancer type (TCGA code, e.g. ``BRCA``) and prompt set;
a slide file may record the organ: DICOM's Body Part Examined, its specimen
description or anatomic structure (OpenSlide's ``dicom.*`` properties), or a
vendor's free-text description. :func:`check_tissue_type` compares the two by
organ, and says so when the file records nothing (most Aperio files do not).
Plain strings in, plain data out: no Qt, no napari.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: Organ -> word stems that name it in metadata (lower case, matched at word starts).
ORGAN_WORDS: dict[str, tuple[str, ...]] = {
    "breast": ("breast", "mamma"),
    "bladder": ("bladder", "urothel", "urinary bladder"),
    "lung": ("lung", "pulmon", "bronch"),
    "kidney": ("kidney", "renal"),
    "uterus": ("uter", "endometri", "corpus uteri"),
    "brain": ("brain", "cerebr", "glio"),
    "skin": ("skin", "cutaneous", "derm"),
    "colon and rectum": ("colon", "rectum", "rectal", "colorectal", "bowel"),
    "prostate": ("prostat",),
    "liver": ("liver", "hepat"),
    "stomach": ("stomach", "gastr"),
    "ovary": ("ovar",),
    "pancreas": ("pancrea",),
    "thyroid": ("thyroid",),
}

#: TCGA cancer-type code -> organ (the codes the shipped prompt sets use, and kin).
CANCER_ORGAN: dict[str, str] = {
    "BRCA": "breast",
    "BLCA": "bladder",
    "LUAD": "lung",
    "LUSC": "lung",
    "KIRC": "kidney",
    "KIRP": "kidney",
    "KICH": "kidney",
    "UCEC": "uterus",
    "GBM": "brain",
    "LGG": "brain",
    "GBMLGG": "brain",
    "SKCM": "skin",
    "COAD": "colon and rectum",
    "READ": "colon and rectum",
    "PRAD": "prostate",
    "LIHC": "liver",
    "STAD": "stomach",
    "OV": "ovary",
    "PAAD": "pancreas",
    "THCA": "thyroid",
}

#: Property keys (OpenSlide names) that record the organ, most specific first.
ORGAN_KEY_PATTERNS = (
    re.compile(r"^dicom\.BodyPartExamined$"),
    re.compile(r"^dicom\..*AnatomicStructure.*\.CodeMeaning$"),
    re.compile(r"^dicom\..*Specimen(Short|Detailed)Description$"),
    re.compile(r"(organ|tissue|body ?part|anatom)", re.IGNORECASE),  # e.g. a vendor's "Tissue"
)
#: Free-text descriptions searched for an organ word only when no key above records one.
DESCRIPTION_KEYS = ("tiff.ImageDescription", "openslide.comment")


def organ_of(text: str) -> str | None:
    """The organ ``text`` names (by :data:`ORGAN_WORDS`), or None; the first named wins."""
    lowered = text.lower()
    found = []
    for organ, words in ORGAN_WORDS.items():
        for word in words:
            match = re.search(rf"\b{re.escape(word)}", lowered)
            if match:
                found.append((match.start(), organ))
    return min(found)[1] if found else None


def model_organ(cancer_type: str | None, prompt_set: str | None = None) -> str | None:
    """The organ a model is for: its cancer type's, else its prompt set's, else one it names."""
    for name in (cancer_type, prompt_set):
        if name and str(name).strip().upper() in CANCER_ORGAN:
            return CANCER_ORGAN[str(name).strip().upper()]
    for name in (cancer_type, prompt_set):
        if name:
            organ = organ_of(str(name))
            if organ is not None:
                return organ
    return None


def recorded_organ(properties: Mapping[str, str]) -> tuple[str, str] | None:
    """``(key, value)`` of the slide property recording its organ or specimen, if any."""
    for pattern in ORGAN_KEY_PATTERNS:
        for key in sorted(properties):
            value = str(properties[key]).strip()
            if value and pattern.search(key):
                return key, value
    for key in DESCRIPTION_KEYS:
        value = str(properties.get(key, "")).strip()
        if value and organ_of(value) is not None:
            return key, value
    return None


@dataclass(frozen=True, kw_only=True)
class TissueCheck:
    """The model's tissue type beside what the slide file records about its organ."""

    cancer_type: str | None  # the card's
    prompt_set: str | None  # the prompt set's name (card.prompts["set"])
    expected: str | None  # the organ the model is for, when known
    key: str | None = None  # the slide property read
    recorded: str | None = None  # its value
    found: str | None = None  # the organ that value names

    @property
    def disagrees(self) -> bool:
        """True only when both organs are known and differ."""
        return self.expected is not None and self.found is not None and self.expected != self.found

    def model_text(self) -> str:
        """E.g. "BRCA (breast), prompt set BRCA"."""
        name = self.cancer_type or self.prompt_set or "unknown tissue type"
        organ = f" ({self.expected})" if self.expected and self.expected not in name.lower() else ""
        prompts = (
            f", prompt set {self.prompt_set}"
            if self.prompt_set and self.prompt_set != self.cancer_type
            else ""
        )
        return f"{name}{organ}{prompts}"

    def slide_text(self) -> str:
        """What the file says about the organ, in words."""
        if self.recorded is None:
            return "the file does not record the organ"
        value = self.recorded if len(self.recorded) <= 40 else self.recorded[:39] + "…"
        if self.found is None:
            return f"the file records '{value}' ({self.key}), not an organ napari-hila knows"
        return f"the file records {self.found} ({self.key}: {value})"

    def warning(self) -> str | None:
        """One sentence when the organs differ, else None."""
        if not self.disagrees:
            return None
        return (
            f"The model and its prompts are for {self.expected} ({self.model_text()}), but "
            f"{self.slide_text()}: its risk and maps may not apply to this slide."
        )

    def html(self) -> str:
        """The dock's line: the model's tissue type; what the file records."""
        text = f"Model and prompts for {self.model_text()}; {self.slide_text()}"
        return html.escape(text, quote=False)


def check_tissue_type(
    cancer_type: str | None, prompt_set: str | None, properties: Mapping[str, str]
) -> TissueCheck:
    """Compare the model's tissue type with the organ the slide's ``properties`` record."""
    expected = model_organ(cancer_type, prompt_set)
    record = recorded_organ(properties)
    key, value = record if record is not None else (None, None)
    return TissueCheck(
        cancer_type=cancer_type,
        prompt_set=prompt_set,
        expected=expected,
        key=key,
        recorded=value,
        found=organ_of(value) if value else None,
    )
