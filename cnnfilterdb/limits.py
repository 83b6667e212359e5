"""The bounds of what one analysis request may ask for, in one place: the engine checks them
(analysis.py), the HTTP schemas and the figure requests (plots.py) declare the same, and this
module imports nothing, so that checking a request costs no import of the engine."""

MAX_BINS = 10_000                     # histogram bins of a divergence or /v1/histograms
MAX_DENSITY2D_BINS = 1_000            # bins per axis of a 2-D histogram
MIN_KDE_BINS, MAX_KDE_BINS = 16, 8_192  # the fine histogram a KDE is computed from
DEFAULT_KDE_BINS = 2_048
MAX_RANGE_ABS = 1e6                   # ends of a 2-D histogram's range (coefficients of peak-scaled filters are within +-3)
MAX_SIMILAR_K = 1_000                 # models a /v1/models/{id}/similar answer may list
MAX_DEGENERATE_LIMIT = 10_000         # layers per page of /v1/quality/degenerate
MAX_OFFSET = 2**40                    # how many flagged layers a page may skip
MAX_ID = 2**31 - 1                    # model and layer ids are the catalog's INTEGER
