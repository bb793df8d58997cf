"""The pipeline's steps over the library: keys, paths, steps, registry candidates."""
