"""Feature extractors (handcrafted families, size, deep embeddings), the feature store and FeatureSet."""
