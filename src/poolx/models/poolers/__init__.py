"""The built-in poolers, one module per family. Their registry entries (names, options, what they read) are in
poolx.models.registry, which imports a module here only when one of its poolers is built."""
