"""The test app: ``SavedFile`` as in the original system, plus a model with an ImageField."""
