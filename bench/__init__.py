"""BrainGenBench orchestration: registry, suites, cohorts, runner, records and the CLI."""

__version__ = "0.1.0"
