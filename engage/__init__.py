"""engage: churn and appetence prediction on an engagement index."""

__version__ = "0.1.0"
