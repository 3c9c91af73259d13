"""Groups of ``engage`` sub-commands, each with a ``register(app)`` that adds them."""
