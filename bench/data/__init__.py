"""Reference cohorts: subjects in atlas space with captions. Knows no model."""

from bench.data.grid import GRIDS, Grid, get_grid
from bench.data.subject import Cohort, Subject

__all__ = ["GRIDS", "Grid", "get_grid", "Cohort", "Subject"]
