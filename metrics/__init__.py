"""Pure metric computations: arrays and features in, numbers out. Imports nothing from bench,
generators or leaderboards; encoders it needs are handed in as callables by the runner."""
