"""CircuitForge core: shared building blocks for CircuitForge products."""
