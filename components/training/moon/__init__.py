"""MOON pretraining, post-training, embedding and evaluation."""
