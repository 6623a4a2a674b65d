"""futureseg: predict the semantic mask of frame 22 from the first 11 frames of a video."""

__version__ = "0.1.0"
