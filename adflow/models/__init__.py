"""Model code shared by training, evaluation and serving (architectures, encoders, predictors)."""
