"""A test app that writes the way image libraries do: originals, and derived files (renditions)."""
