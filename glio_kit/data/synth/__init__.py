"""Synthetic T2-weighted brain MRI cohort with ground-truth glioma labels.

Real T2 data cannot be downloaded by the kit, so the demo and the tests use subjects built
from real anatomy: the MNI ICBM152 2009a templates shipped inside ``nilearn`` (a
skull-stripped T1 whose support is the brain mask, and grey- and white-matter probability
maps). A T2-like contrast follows from the tissue classes (CSF bright, grey matter middle,
white matter dark), mixed by the probability maps so partial volume looks natural.

Each subject gets its own smooth non-rigid deformation and small affine, ventricle size,
tissue contrast, bias field, Rician noise and global intensity scale. Tumour subjects get
a glioma in white matter (necrotic core, enhancing rim, edema, irregular shape, mass
effect) with a BraTS-style label map (1 necrosis, 2 edema, 4 enhancing). A fraction of the
healthy test subjects get small white-matter hyperintensities, the kind of finding that
gave the paper its false positives.

:func:`make_cohort` writes NIfTI files in the IXI layout (healthy) and the BraTS layout
(tumour), so the demo goes through the same loaders as a user's real data.
:func:`synth_subject` makes one subject in memory.

Modules, in the order a subject is made:

- ``templates``: the templates on the output grid and candidate lesion sites;
- ``fields``: random smooth fields and soft shapes;
- ``anatomy``: the subject's deformation, bias field and texture, tissue sampling;
- ``lesions``: glioma (placement, mass effect, labels) and white-matter hyperintensities;
- ``subject``: :func:`synth_subject` (random streams, T2 contrast, noise);
- ``cohort``: :func:`make_cohort` (subject plan, NIfTI files, cohort.json, README).
"""
from .cohort import SYNTH_VERSION, make_cohort
from .subject import KINDS, synth_subject
from .templates import load_templates

__all__ = ["make_cohort", "synth_subject", "load_templates", "SYNTH_VERSION", "KINDS"]
