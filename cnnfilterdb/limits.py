"""Every bound the engine puts on one request, in one place, each with what it bounds.

The request types (requests.py) take their bounds from here, the engine checks the costs that
depend on the store (analysis.py, plots.py), and ``/v1/stats`` lists every one of them under
``limits`` beside the service's settings (service/settings.py), from ``ENGINE_LIMITS``. This module
imports nothing, so that checking a request costs no import of the engine.
"""

MAX_BINS = 10_000                     # histogram bins of a divergence or /v1/histograms
MAX_DENSITY2D_BINS = 1_000            # bins per axis of a 2-D histogram
MIN_KDE_BINS, MAX_KDE_BINS = 16, 8_192  # the fine histogram a KDE is computed from
DEFAULT_KDE_BINS = 2_048
# The notebook's density figure: 512 x 512 bins of (c0, c1) over [-3.3, 3.3] on both axes. The
# stored histograms (segments.py) hold these and the KDE's DEFAULT_KDE_BINS: those figures read no filter.
DENSITY_BINS = 512
DENSITY_RANGE = (-3.3, 3.3)
# What is stored per unit (a model's layers of one depth bin: 9 x 2048 int32, 72 KiB) and per model
# (512 x 512 int32, 1 MiB) only pays for itself above a size: smaller units and models are scanned
# when a figure needs them (their filters only: a row group or two each), so the stored histograms
# take at most 72 and 32 bytes a filter whatever the number of models (at the real dataset's shape
# about 2 bytes; every unit and all but a few models are stored there).
FINE_MIN_FILTERS = 1_024
DENSITY_MIN_FILTERS = 32_768
MAX_RANGE_ABS = 1e6                   # ends of a 2-D histogram's range (coefficients of peak-scaled filters are within +-3)
MAX_SIMILAR_K = 1_000                 # models a /v1/models/{id}/similar answer may list
MAX_DEGENERATE_LIMIT = 10_000         # layers per page of /v1/quality/degenerate
MAX_OFFSET = 2**40                    # how many flagged layers a page may skip
MAX_ID = 2**31 - 1                    # model and layer ids, and store versions, are the catalog's INTEGER

# Bounds on what one query may build, so that memory stays bounded whatever the store: the
# histograms (groups x 9 x bins int64, 160 MB at most) and the d x d matrix of a divergence.
MAX_HISTOGRAM_CELLS = 20_000_000
MAX_GROUPS = 1_000
# The pairwise work of a divergence matrix, d (d - 1) / 2 pairs x 9 components x bins: about 1e8
# cells a second here for the slowest metrics, so at most a few seconds (a review's 973 groups x
# 2283 bins took 137 s and 1 GB); and the cells a /v1/histograms response may list (16 MB of JSON).
MAX_PAIR_CELLS = 400_000_000
MAX_RESPONSE_CELLS = 2_000_000

# The figures: the most groups a figure can label legibly (a larger selection is a 400 naming the
# limit), the most groupings in one row of heatmaps or one box plot, and the size of a drawing.
MAX_LABELS = {"kl_combined": 80, "divergence": 80, "ridge": 40, "quality": 20,
              # the studies' figures: bars per series (values of within), cohorts side by side per
              # depth decile, scatter panels (groups of a correlation)
              "cohort_divergence": 40, "cohort_metric": 6, "correlation": 16}
# The studies' figures: the most values of ``series`` (a colour of bars each, or a panel each).
MAX_SERIES = {"cohort_divergence": 10, "cohort_metric": 12}
MAX_GROUPINGS = 6
# A kendall correlation's bootstrap compares every pair of models in each of its 2000 resamples:
# at most this many pair comparisons a request (about 15 s on one core: the real dataset's 647 models
# in one group are 4.2e8; 1e9 took 33 s, holding an analysis slot).
MAX_KENDALL_PAIRS = 450_000_000
MAX_PIXELS = 6_000_000  # 24 x 8.6 in at 170 dpi, 7 x 2.6 in at 500: Agg and its image resampling take ~50 B a pixel
MIN_DPI, MAX_DPI = 10, 600
MIN_INCHES, MAX_INCHES = 0.5, 100.0
MAX_FILTERS_DRAWN = 256  # layer_filters: the first filters of a layer, 16 to a row
MAX_CURVE_POINTS = 512  # ridge: points drawn per curve (an SVG of 9 x 40 finer curves ran to 80 MB)

# What a request may send and an error may say back.
MAX_SQL_CHARS = 100_000   # the text of one POST /v1/sql statement
MAX_PROPERTIES = 256        # model properties a store holds (columns of its models)
MAX_TEXT_CHARS = 10_000        # a text value a label stores (a category or a note, not a document)
MAX_MANIFEST_BYTES = 64 << 20  # a label manifest (a meta.csv of 647 models is a few tens of KB)
ECHO_CHARS = 100          # a client's value quoted in an error message (selection.echo)
MESSAGE_CHARS = 1_000     # an error message of the service, whatever its source

# name -> (value, what it bounds): what /v1/stats shows (service/schemas.Limits).
ENGINE_LIMITS = {
    "max_id": (MAX_ID, "the largest model, layer id and store version (the catalog's INTEGER)"),
    "max_bins": (MAX_BINS, "histogram bins per component of a divergence or /v1/histograms"),
    "max_density2d_bins": (MAX_DENSITY2D_BINS, "bins per axis of /v1/density2d"),
    "min_kde_bins": (MIN_KDE_BINS, "the fewest bins of the histogram a KDE is computed from"),
    "max_kde_bins": (MAX_KDE_BINS, "the most bins of the histogram a KDE is computed from"),
    "max_range_abs": (MAX_RANGE_ABS, "the largest |end| of a 2-D histogram's range"),
    "max_similar_k": (MAX_SIMILAR_K, "models a /v1/models/{id}/similar answer may list"),
    "max_degenerate_limit": (MAX_DEGENERATE_LIMIT, "layers per page of /v1/quality/degenerate"),
    "max_offset": (MAX_OFFSET, "how many flagged layers a page of /v1/quality/degenerate may skip"),
    "max_histogram_cells": (MAX_HISTOGRAM_CELLS, "groups x 9 x bins of the histograms one analysis may build"),
    "max_groups": (MAX_GROUPS, "groups of one divergence or KDE"),
    "max_pair_cells": (MAX_PAIR_CELLS, "pairs of groups x 9 x bins one divergence may compare"),
    "max_response_cells": (MAX_RESPONSE_CELLS, "histogram cells a /v1/histograms answer may list (half that for "
                                               "/v1/kde's densities)"),
    "max_figure_labels": (MAX_LABELS, "the most groups each figure draws (per figure)"),
    "max_figure_series": (MAX_SERIES, "the most values of series of a cohort_divergence (colours) or cohort_metric "
                                      "(panels) figure"),
    "max_figure_groupings": (MAX_GROUPINGS, "the most groupings of one kl_combined or drift_box figure"),
    "max_figure_pixels": (MAX_PIXELS, "width x height x dpi^2 of one figure"),
    "max_figure_dpi": (MAX_DPI, "the highest dpi of a figure (the lowest: 10)"),
    "max_figure_inches": (MAX_INCHES, "the largest width or height of a figure, in inches (the smallest: 0.5)"),
    "max_filters_drawn": (MAX_FILTERS_DRAWN, "the filters of a layer the layer_filters figure draws (its first)"),
    "max_curve_points": (MAX_CURVE_POINTS, "points drawn per curve of a ridge plot (a finer grid is thinned)"),
    "max_sql_chars": (MAX_SQL_CHARS, "characters of one POST /v1/sql statement"),
    "echo_chars": (ECHO_CHARS, "characters of a request's value an error message quotes"),
    "message_chars": (MESSAGE_CHARS, "characters of an error message (longer ones are cut, with their length)"),
}
