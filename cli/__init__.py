"""The ``engage`` command line: the roof (it imports the product, never the reverse)."""
