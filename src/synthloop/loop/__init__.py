"""The loop: the Project facade, one round, nightly runs, simulation, scaling out, the project lock."""
