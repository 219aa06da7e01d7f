"""Content encoders shared by stages (the text baseline here; MOON adds its own)."""
