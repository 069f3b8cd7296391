"""Data: class labels, image validation and storage, importers, splits and the phantom set."""
