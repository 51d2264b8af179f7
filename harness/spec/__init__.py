"""The suite file parsed once into typed parts (model, data, stack, task, export, tolerances, run)."""
