"""Stage 2, frame prediction: train the frame predictor, then predict frames 11…21."""
