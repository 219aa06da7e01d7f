"""CiUBM and DIN CTR training on Ray Train."""
