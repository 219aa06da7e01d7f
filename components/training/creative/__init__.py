"""Creative4U: CoT-SFT then GRPO of the creative selector, evaluation, tournament, distilled fast scorer."""
