"""Small helpers shared by the rooms above the model: atomic file writes and the missing-extra error."""
