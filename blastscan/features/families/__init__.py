"""The handcrafted families, one module each: the module holds the family's definitions and its
:class:`~blastscan.features.handcrafted.FamilyExtractor` subclass, registered when the extractor registry
imports this folder (:mod:`blastscan.features.handcrafted`)."""
