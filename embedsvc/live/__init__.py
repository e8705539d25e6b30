"""Live collections: document writes while serving, the embedder of the fresh segment, jobs,
and the writer lease that decides which process runs the background work."""
