"""Stage: offline evaluation."""
