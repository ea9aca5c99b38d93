"""The student: fine-tune a small model on a round's data (`train`) and measure it on held-out sets
(`sets`, `evaluate`), to test whether diverse data generalizes (docs/formulas.md#student)."""
