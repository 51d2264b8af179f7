"""Data intake and the stack: manifests, image intake, decoders, resizers, colour paths, pre-processing, feeding."""
