"""The paper's statistics (docs/method.md#statistics), in numpy: moments, PCA basis, layer quality."""
