"""Reference cohorts: subjects in atlas space with captions. Knows no model."""

from cohorts.grid import GRIDS, Grid, get_grid
from cohorts.subject import Cohort, Subject

__all__ = ["GRIDS", "Grid", "get_grid", "Cohort", "Subject"]
