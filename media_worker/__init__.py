"""FFmpeg media worker: the container Lambda of the execution plane."""
