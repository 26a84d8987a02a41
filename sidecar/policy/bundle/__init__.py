"""OPA bundles for the embedded engine: the tarball format, its signatures, the poller that
downloads it, activation into the engine, and the last good bundle kept on disk."""
