"""The demo: a SYNTHETIC survival cohort built from real tissue, and its model.

No labelled whole-slide images can be shipped, so the demo model is trained
on virtual patients assembled from tiles of the bundled H&E sample
(CMU-1-Small-Region). Their survival times are drawn from a hazard we set
from each mosaic's composition and spatial arrangement, so the "truth" is
known and the oracle C-index can be reported next to the model's. The demo
model shows the software working; it says nothing about real patients and is
not for clinical use.
"""

DEMO_LABEL = (
    "HiLa demo, 1024 px regions (synthetic cohort from CMU-1-Small-Region tiles; "
    "not for clinical use)"
)
