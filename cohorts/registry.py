"""The cohort registry: ``phantom`` and the prepared real datasets, plus ``braingenbench.cohorts`` plugins."""

from __future__ import annotations

from core.registry import Registry

__all__ = ["cohorts"]

cohorts: Registry = Registry("cohort", "braingenbench.cohorts")

cohorts.register("phantom", "cohorts.phantom:PhantomCohort",
                 description="SYNTHETIC cohort built offline from ICBM152 + Neuromorphometrics priors")
cohorts.register("phantom-ms", "cohorts.phantom_ms:PhantomMSCohort",
                 description="SYNTHETIC phantom with MS-like white-matter lesions and deep grey-matter atrophy")
cohorts.register("phantom-ms-long", "cohorts.phantom_ms:PhantomMSLongCohort",
                 description="SYNTHETIC longitudinal phantom-ms: a baseline and two follow-ups per subject")
for _name, _cls, _desc in (("ixi", "IXICohort", "IXI (T1/T2/PD, 3 London sites), prepared from its download"),
                           ("oasis1", "OASIS1Cohort", "OASIS-1 cross-sectional T1w, prepared from its download"),
                           ("ibsr", "IBSRCohort", "IBSR V2.0 T1w with manual labels, prepared from its download"),
                           ("kirby21", "KIRBY21Cohort", "Kirby21 MPRAGE/T2w/FLAIR, prepared from its download"),
                           ("bids", "BIDSCohort", "any BIDS dataset (participants.tsv + anat/*_T1w ...), prepared")):
    cohorts.register(_name, f"cohorts.prepare:{_cls}", description=_desc)
