"""CNN Filter DB: trained 3x3 convolution filters as a database and a service."""
__version__ = "0.1.0"
