"""The core: errors, atomic files, lazy imports, hashing, the environment, device probing; imports nothing of ours."""
