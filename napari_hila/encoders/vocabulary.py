"""``descriptor-vocabulary``: a weight-free text encoder that lives in the descriptor's space.

The ``hila-descriptor`` vision encoder measures named things (stain amounts,
nuclear area, nucleus counts by size, fibre orientation, background). A
general text model such as MiniLM knows nothing of those dimensions, so with
it a prompt's words do not decide which tiles the prompt aligns with. This
encoder closes that gap without weights: a small vocabulary maps words of a
prompt's wording to signed weights on named :data:`DESCRIPTOR_NAMES`
dimensions, read as a direction in the z-scored descriptor space the model
sees (features are standardised per dimension before training, so a unit of
weight means one standard deviation of that measurement).

A prompt's embedding is the normalised sum of the unit directions of every
vocabulary term its text matches (each term counts once). A term preceded by
"no", "not", "without", "absent" or "lacking" (within three words) counts with
the opposite sign. A prompt that matches no term cannot be grounded: it gets a
pseudo-random unit vector seeded from its text (deterministic, so a run is
reproducible) and :meth:`DescriptorVocabularyEncoder.grounding` reports
``None`` for it: a label on an arbitrary direction.

Some findings have no honest proxy in the descriptor and are left out on
purpose: necrosis (eosinophilic, nucleus-poor debris measures like stroma),
mitoses, nucleoli, vessels and invasion, discohesion. Prompts about only those
stay ungrounded rather than pretending.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from napari_hila.encoders.descriptor import DESCRIPTOR_DIM, DESCRIPTOR_NAMES, DESCRIPTOR_VERSION

__all__ = ["VOCABULARY", "VOCABULARY_VERSION", "DescriptorVocabularyEncoder", "VocabularyTerm"]

VOCABULARY_VERSION = "1"

# descriptor dimensions the vocabulary refers to, by their names in DESCRIPTOR_NAMES
_BACKGROUND = "background fraction (glass, fat)"
_TISSUE = "tissue fraction"
_H_MEAN = "haematoxylin mean (tissue)"
_E_MEAN = "eosin mean (tissue)"
_HE_RATIO = "haematoxylin/eosin ratio"
_NUCLEAR = "nuclear area fraction (of tissue)"
_NUCLEAR_SMOOTH = "nuclear area fraction, smoothed 4 um"
_SMALL_NUCLEI = "small nuclei count (about 5-8 um)"
_LARGE_NUCLEI = "large nuclei count (about 10-18 um)"
_PLEOMORPHISM = "large/small nuclei ratio (pleomorphism proxy)"
_CHROMATIN = "nuclear haematoxylin mean (chromatin density)"
_CHROMATIN_VAR = "nuclear haematoxylin std (chromatin heterogeneity)"
_NUCLEAR_SIZE = "mean nuclear size proxy (nuclear area / nuclei count)"
_GRADIENT_1UM = "gradient energy at 1 um/px"
_FIBRES = "orientation anisotropy at 1 um/px (fibres)"
_ARCHITECTURE = "orientation anisotropy at 4 um/px (architecture)"
_FINE_DETAIL = "Laplacian energy at 1 um/px (fine detail)"
_GRAY_MEAN = "gray intensity mean"
_WHITE = "gray histogram bin 5/5"
_CONTRAST = "local contrast at 8 um (block std of gray)"
_EOSIN_TEXTURE = "eosin texture: gradient energy of eosin at 1 um/px"
_CLUSTERING = "haematoxylin clustering: std of 16 um block nuclear fraction"


@dataclass(frozen=True)
class VocabularyTerm:
    """One finding: regular expressions over the normalised text and its descriptor weights."""

    name: str
    patterns: tuple[str, ...]  # matched on lower-case text, words separated by single spaces
    weights: Mapping[str, float]  # DESCRIPTOR_NAMES entry -> signed weight (z-score units)


_NUC = r"nucle(?:i|us|ar)"  # nuclei, nucleus, nuclear
_GAP = r"(?:\w+ ){0,3}"  # up to three words between an adjective and its noun

VOCABULARY: tuple[VocabularyTerm, ...] = (
    # Many nuclei close together: the nuclear mask covers much of the tissue, nuclei are many
    # and the tissue is blue (haematoxylin) rather than pink.
    VocabularyTerm(
        "dense nuclei",
        (
            rf"dense(?:ly)? {_GAP}{_NUC}",
            r"crowd(?:ed|ing)",
            r"hypercellular(?:ity)?",
            r"high(?:ly)? cellular(?:ity)?",
            r"densely cellular",
            r"(?:closely|tightly) packed",
            r"overlapping nuclei",
        ),
        {_NUCLEAR: 1.0, _NUCLEAR_SMOOTH: 1.0, _H_MEAN: 0.5, _HE_RATIO: 0.5, _SMALL_NUCLEI: 0.5},
    ),
    # The opposite: few nuclei in much matrix or cytoplasm.
    VocabularyTerm(
        "sparse nuclei",
        (
            r"sparse(?:ly)?",
            r"hypocellular(?:ity)?",
            r"paucicellular",
            r"low cellularity",
            r"few nuclei",
            r"scattered nuclei",
        ),
        {_NUCLEAR: -1.0, _NUCLEAR_SMOOTH: -1.0, _H_MEAN: -0.5, _HE_RATIO: -0.5},
    ),
    # Solid growth: tissue fills the tile (no lumina, fat or glass) and is cellular.
    VocabularyTerm(
        "solid growth",
        (r"solid", r"sheets? of (?:\w+ ){0,2}cells", r"confluent"),
        {_BACKGROUND: -1.0, _TISSUE: 1.0, _NUCLEAR: 0.5},
    ),
    # Lymphocytes are small round nuclei with dense dark chromatin: many small nuclei,
    # a low large/small ratio, a small mean nuclear size and dark nuclear haematoxylin.
    VocabularyTerm(
        "lymphocytes",
        (
            r"lympho(?:cytes?|cytic|id)",
            r"plasma cells?",
            r"tils?",
            r"inflammat(?:ory|ion)",
            r"immune (?:cells?|infiltrate)",
        ),
        {_SMALL_NUCLEI: 1.0, _PLEOMORPHISM: -0.5, _NUCLEAR_SIZE: -0.5, _CHROMATIN: 0.5},
    ),
    # Small nuclei named as such: the small-nucleus count up, the size proxies down.
    VocabularyTerm(
        "small nuclei",
        (rf"small {_GAP}{_NUC}", r"small (?:round )?cells"),
        {_SMALL_NUCLEI: 1.0, _PLEOMORPHISM: -1.0, _NUCLEAR_SIZE: -1.0},
    ),
    # Pleomorphic or enlarged nuclei: more large nuclei relative to small ones, a larger mean
    # nuclear size and more varied chromatin.
    VocabularyTerm(
        "large pleomorphic nuclei",
        (
            r"pleomorph(?:ic|ism)",
            rf"(?:large|enlarged|big|giant) {_GAP}{_NUC}",
            r"nucleomegaly",
            r"anaplas(?:ia|tic)",
            r"bizarre",
            r"high grade",
            rf"atypical {_GAP}(?:{_NUC}|cells)",
            rf"{_NUC} atypia",
        ),
        {_PLEOMORPHISM: 1.0, _LARGE_NUCLEI: 1.0, _NUCLEAR_SIZE: 1.0, _CHROMATIN_VAR: 0.5},
    ),
    # Uniform, low-grade nuclei: the opposite of pleomorphism (sizes alike, chromatin even).
    VocabularyTerm(
        "uniform nuclei",
        (r"uniform", r"monoton(?:ous|y)", r"bland", r"low grade", r"regular nuclei"),
        {_PLEOMORPHISM: -1.0, _NUCLEAR_SIZE: -0.5, _CHROMATIN_VAR: -0.5},
    ),
    # Dark, coarse chromatin: more haematoxylin inside the nuclear mask, unevenly.
    VocabularyTerm(
        "hyperchromatic nuclei",
        (
            r"hyperchromat(?:ic|ism|asia)",
            r"(?:coarse|clumped|dense) chromatin",
            rf"dark {_GAP}nuclei",
        ),
        {_CHROMATIN: 1.0, _CHROMATIN_VAR: 0.5},
    ),
    # Pale, open chromatin: less haematoxylin inside the nuclei.
    VocabularyTerm(
        "vesicular nuclei",
        (r"vesicular", r"fine chromatin", r"open chromatin", r"pale nuclei"),
        {_CHROMATIN: -1.0, _CHROMATIN_VAR: -0.5},
    ),
    # Collagenous stroma is pink (eosin) and fibrous: oriented texture, eosin texture, and
    # fewer nuclei than epithelium.
    VocabularyTerm(
        "stroma",
        (
            r"strom(?:a|al)",
            r"collagen(?:ous)?",
            r"fibro(?:us|tic|sis|blastic|blasts?)",
            r"desmoplas(?:ia|tic)",
            r"scar",
            r"scleros(?:is|ing)|sclerotic",
            r"hyalini[sz](?:ed|ation)",
        ),
        {_E_MEAN: 1.0, _HE_RATIO: -0.5, _NUCLEAR: -0.5, _FIBRES: 0.5, _EOSIN_TEXTURE: 0.5},
    ),
    # Fibres, fascicles and spindle cells: orientation anisotropy at the fibre scale and above.
    VocabularyTerm(
        "oriented fibres",
        (
            r"fib(?:re|er)s?",
            r"fascic(?:les?|ular)",
            r"spindle",
            r"wavy",
            r"streaming",
            r"aligned",
        ),
        {_FIBRES: 1.0, _ARCHITECTURE: 0.5},
    ),
    # Pink cytoplasm-rich cells: eosin up and nuclei further apart.
    VocabularyTerm(
        "eosinophilic cytoplasm",
        (
            r"eosinophil(?:ic|ia)",
            r"pink",
            r"apocrine",
            r"oncocyt(?:ic|es)",
            r"abundant (?:\w+ ){0,2}cytoplasm",
        ),
        {_E_MEAN: 1.0, _NUCLEAR: -0.5},
    ),
    # Clear or vacuolated cytoplasm: pale cells, little eosin, bright pixels inside the tissue.
    VocabularyTerm(
        "clear cytoplasm",
        (r"clear (?:\w+ ){0,1}(?:cytoplasm|cells?)", r"vacuol(?:es?|ated|ation)"),
        {_E_MEAN: -1.0, _GRAY_MEAN: 0.5},
    ),
    # Fat, glass and empty spaces: pixels bright and unstained (the background fraction).
    VocabularyTerm(
        "fat or glass",
        (
            r"fat(?:ty)?",
            r"adipo(?:se|cytes?)",
            r"lipo\w*",
            r"glass",
            r"empty",
            r"background",
            r"white space",
        ),
        {_BACKGROUND: 1.0, _TISSUE: -1.0, _WHITE: 0.5, _GRAY_MEAN: 0.5},
    ),
    # Lumina of glands, tubules and vessels: some background inside tissue, with nuclei lining
    # the spaces (clustered nuclear fraction).
    VocabularyTerm(
        "lumina",
        (
            r"lumin(?:a|al)|lumens?",
            r"tubules?|tubular",
            r"glands?|glandular",
            r"acin(?:i|ar)",
            r"spaces",
        ),
        {_BACKGROUND: 1.0, _TISSUE: -1.0, _CLUSTERING: 0.5},
    ),
    # Heterogeneous, coarse texture: gradient and Laplacian energy and local contrast.
    VocabularyTerm(
        "coarse texture",
        (r"textur(?:e|ed)", r"heterogene(?:ous|ity)", r"coarse(?! chromatin)", r"granular"),
        {_GRADIENT_1UM: 1.0, _FINE_DETAIL: 1.0, _CONTRAST: 0.5},
    ),
    # Smooth, homogeneous tissue: the opposite of texture.
    VocabularyTerm(
        "smooth texture",
        (r"smooth", r"homogene(?:ous|ity)", r"glassy"),
        {_GRADIENT_1UM: -1.0, _FINE_DETAIL: -1.0, _CONTRAST: -0.5},
    ),
)

_NEGATIONS = {"no", "not", "without", "absent", "lacking", "lack", "non"}
_NEGATION_REACH = 3  # words before a match in which a negation flips it


def _normalise(text: str) -> str:
    """Lower case, every run of non-alphanumerics one space (``low-grade`` -> ``low grade``)."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _term_vector(term: VocabularyTerm) -> np.ndarray:
    vector = np.zeros(DESCRIPTOR_DIM, np.float64)
    for dim_name, weight in term.weights.items():
        if dim_name not in DESCRIPTOR_NAMES:
            raise ValueError(f"vocabulary term {term.name!r}: no descriptor dimension {dim_name!r}")
        vector[DESCRIPTOR_NAMES.index(dim_name)] = weight
    return vector / np.linalg.norm(vector)


def _compiled() -> list[tuple[VocabularyTerm, re.Pattern[str], np.ndarray]]:
    return [
        (term, re.compile(r"\b(?:" + "|".join(term.patterns) + r")\b"), _term_vector(term))
        for term in VOCABULARY
    ]


def _negated(text: str, start: int) -> bool:
    before = text[:start].split()[-_NEGATION_REACH:]
    return any(word in _NEGATIONS for word in before)


def _ungrounded_vector(text: str) -> np.ndarray:
    """A unit vector fixed by the text alone (SHA-256 seed): reproducible, meaningless."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(DESCRIPTOR_DIM)
    return vector / np.linalg.norm(vector)


class DescriptorVocabularyEncoder:
    """Prompt texts -> unit directions in the z-scored ``hila-descriptor`` space (no weights)."""

    name = "descriptor-vocabulary"
    version = f"{VOCABULARY_VERSION}+descriptor{DESCRIPTOR_VERSION}"
    output_dim = DESCRIPTOR_DIM

    def __init__(self) -> None:
        self._terms = _compiled()
        self._vectors = {term.name: vector for term, _, vector in self._terms}

    def matches(self, text: str) -> list[tuple[str, int]]:
        """``(term name, +1 or -1)`` for each vocabulary term ``text`` matches, in vocabulary order."""
        clean = _normalise(text)
        found = []
        for term, pattern, _ in self._terms:
            hits = list(pattern.finditer(clean))
            if hits:
                # a term counts once; negated only when every mention of it is negated
                sign = -1 if all(_negated(clean, hit.start()) for hit in hits) else 1
                found.append((term.name, sign))
        return found

    def _embed(self, text: str) -> tuple[np.ndarray, str | None]:
        """The direction of one text and its grounding (None: matched nothing usable)."""
        total = np.zeros(DESCRIPTOR_DIM, np.float64)
        labels = []
        for name, sign in self.matches(text):
            total += sign * self._vectors[name]
            labels.append(name if sign > 0 else f"no {name}")
        norm = np.linalg.norm(total)
        if norm < 1e-6:  # nothing matched, or the matches cancel out
            return _ungrounded_vector(text), None
        return total / norm, ", ".join(labels)

    def grounding(self, texts: Sequence[str]) -> list[str | None]:
        """Per text, the matched terms (``"solid growth, no lumina"``) or None: not grounded."""
        return [self._embed(text)[1] for text in texts]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """K texts -> (K, DESCRIPTOR_DIM) float32 unit rows."""
        out = np.zeros((len(texts), DESCRIPTOR_DIM), np.float32)
        for row, text in enumerate(texts):
            out[row] = self._embed(text)[0]
        return out
