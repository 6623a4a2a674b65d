"""Stages 3–4 and route `frames`: the segmenter's training set (real and generated frames),
the segmenter, its masks of predicted and true frames, and the pseudo-labels of route `masks`."""
