"""Creative4U: Reason-to-Select creative selection (verdict format and rewards so far)."""
