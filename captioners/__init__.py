"""Captioners: volume -> text (the ``report`` task).

A captioner describes 3D brain MRI volumes on the suite grid as radiology-style reports. Built-ins
(registered in :mod:`bench.registry`): ``measure-and-describe`` (atlas-guided measurements and
predictors written out by the caption grammar: the interpretable baseline), ``nearest-caption`` (the
caption of the nearest training volume in a feature extractor's space), ``cohort-prior`` (the most
typical caption of the predicted modality: the floor) and ``folder`` (reports made elsewhere, a CSV).
Plugins register in the entry-point group ``braingenbench.captioners``.
"""
