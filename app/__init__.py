"""The HTTP service around `model.tagger.Tagger`."""
