"""What every stage stands on: the package's errors, atomic file and folder writes, the cache root, quiet logging."""
