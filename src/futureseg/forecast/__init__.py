"""Routes `masks` and `direct`: the mask forecaster and the direct U-Net, trained and run."""
