"""Dependency-free foundations shared by every BrainGenBench package: file I/O, hashing, the home
folder, JSON (:mod:`core.io`), "did you mean" suggestions (:mod:`core.names`) and the plugin registry
mechanism (:mod:`core.registry`). ``core`` imports no other BrainGenBench package."""
