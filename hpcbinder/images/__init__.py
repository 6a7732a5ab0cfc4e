"""The image store and the build server: layout, records, bases, publish, use,
gc, builds and their backends."""
