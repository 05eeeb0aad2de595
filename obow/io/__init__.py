"""The bottom layer of the library: file formats, atomic writes and the checkpoint reader registry.

Nothing here imports another `obow` package except `obow.errors` and `obow.hashing`, so every other
layer (config, data, models, train, eval, export) can build on it without an import cycle. Modules that
the lab server reaches through `obow.config` (`export_formats`) import neither torch nor numpy.
"""
