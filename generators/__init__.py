"""Everything that makes volumes: the generator protocol, the in-house ldm3d and baselines."""

from generators.base import GenerationOutput, Generator, GeneratorContext, Prompt

__all__ = ["GenerationOutput", "Generator", "GeneratorContext", "Prompt"]
