"""Result validation: QC multirules, the QC gate, delta checks (AUTOVERIFICATION.md §3-4)."""
