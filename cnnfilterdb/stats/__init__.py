"""The paper's statistics (SPEC section 6), in numpy: moments, PCA basis, layer quality."""
