// Kiln UI (being built)
